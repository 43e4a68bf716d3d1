"""A turn's output read back as text and whole tool calls: repeats end the turn, cut calls never
reach a client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from hearth.engine.types import (
    FinishReason,
    GenerationRequest,
    ReasoningBudget,
    RequestOutput,
    SamplingParams,
)
from hearth.server.core.tools import render_call
from hearth.server.core.turns import ReasoningSplitter, Step, TurnDecoder, decode_steps

WEATHER = render_call("get_weather", json.dumps({"city": "Paris"}))
TIME = render_call("get_time", json.dumps({"zone": "CET"}))


def feed_all(decoder: TurnDecoder, text: str, reason: FinishReason, piece: int = 3) -> tuple:
    shown, calls = "", []
    for start in range(0, len(text), piece):
        _, more_text, more_calls = decoder.feed(text[start : start + piece])
        shown += more_text
        calls += more_calls
    _, tail, last_calls, finish = decoder.finish(reason)
    return shown + tail, calls + last_calls, finish


def test_plain_text_passes_through() -> None:
    decoder = TurnDecoder("r", parse_tools=False)
    assert decoder.feed("Hello") == ("", "Hello", [])
    assert decoder.finish(FinishReason.STOP) == ("", "", [], "stop")
    assert decoder.finish(FinishReason.LENGTH)[3] == "length"


@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
def test_calls_come_out_whole_at_any_split(piece: int) -> None:
    decoder = TurnDecoder("r", parse_tools=True)
    text, calls, finish = feed_all(decoder, f"{WEATHER}\n{TIME}", FinishReason.STOP, piece)
    assert text == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"zone": "CET"}),
    ]
    assert finish == "tool_calls"


def test_a_repeated_call_ends_the_turn_as_a_tool_call() -> None:
    decoder = TurnDecoder("r", parse_tools=True)
    repeat = render_call("get_weather", '{ "city" :"Paris"}')  # same arguments, other spacing
    _text, calls, finish = feed_all(decoder, f"{WEATHER}\n{repeat}\n{TIME}", FinishReason.LENGTH)
    assert [c.name for c in calls] == ["get_weather"]
    assert decoder.ended
    assert finish == "tool_calls"  # not "length": the turn ended at the repeat


def test_a_call_cut_by_the_limit_is_dropped() -> None:
    decoder = TurnDecoder("r", parse_tools=True)
    cut = f'{WEATHER}\n<tool_call>\n{{"name": "get_weather", "arguments": {{ "cit'
    _text, calls, finish = feed_all(decoder, cut, FinishReason.LENGTH)
    assert [c.name for c in calls] == ["get_weather"]
    assert all(json.loads(c.arguments) for c in calls)
    assert finish == "length"


def test_text_before_a_call_is_shown() -> None:
    decoder = TurnDecoder("r", parse_tools=True)
    text, calls, finish = feed_all(decoder, f"Let me check.\n{WEATHER}", FinishReason.STOP)
    assert text.strip() == "Let me check."
    assert len(calls) == 1 and finish == "tool_calls"


def output(text: str, tokens: int, reason: FinishReason | None = None) -> RequestOutput:
    return RequestOutput(
        text=text, prompt_tokens=10, completion_tokens=tokens, cached_tokens=0, finish_reason=reason
    )


def test_decode_steps_stops_reading_after_a_repeat() -> None:
    read: list[int] = []
    closed: list[bool] = []

    async def outputs() -> AsyncIterator[tuple[int, RequestOutput]]:
        try:
            for i, piece in enumerate([WEATHER, "\n", WEATHER, "\n", TIME, ""]):
                read.append(i)
                yield 0, output(piece, i + 1, FinishReason.STOP if i == 5 else None)
        finally:
            closed.append(True)

    async def run() -> list[Step]:
        request = GenerationRequest("r", (1,), SamplingParams(max_tokens=16))
        return [step async for step in decode_steps(outputs(), request, parse_tools=True)]

    steps = asyncio.run(run())
    assert steps[-1].finish == "tool_calls"
    assert sum(len(s.calls) for s in steps) == 1
    assert read == [0, 1, 2]  # nothing after the repeat was read: the request was aborted
    assert closed == [True]


REASONING = ReasoningBudget("<think>", "</think>", (), -1, starts_open=True)
THOUGHT = "\nLet me think: <b> is bold.\n</think>\n\nThe answer."


@pytest.mark.parametrize("piece", range(1, len(THOUGHT) + 1))
def test_thinking_is_split_from_the_answer_at_any_cut(piece: int) -> None:
    splitter = ReasoningSplitter("<think>", "</think>", starts_inside=True)
    thinking, answer = "", ""
    for start in range(0, len(THOUGHT), piece):
        more_thinking, more_answer = splitter.feed(THOUGHT[start : start + piece])
        thinking, answer = thinking + more_thinking, answer + more_answer
    more_thinking, more_answer = splitter.finish()
    assert thinking + more_thinking == "Let me think: <b> is bold.\n"
    assert answer + more_answer == "The answer."


@pytest.mark.parametrize("piece", [1, 3, 100])
def test_an_open_tag_the_model_writes_is_found(piece: int) -> None:
    splitter = ReasoningSplitter("<think>", "</think>", starts_inside=False)
    text = "\n<think>hmm</think>Yes."
    parts = [splitter.feed(text[i : i + piece]) for i in range(0, len(text), piece)]
    parts.append(splitter.finish())
    assert "".join(t for t, _ in parts) == "hmm"
    assert "".join(a for _, a in parts) == "Yes."


def test_an_answer_without_thinking_passes_through() -> None:
    splitter = ReasoningSplitter("<think>", "</think>", starts_inside=False)
    assert splitter.feed("<th") == ("", "")  # may still be the open tag
    assert splitter.feed("ere") == ("", "<there")


def test_calls_after_thinking_are_parsed_and_thinking_is_not() -> None:
    decoder = TurnDecoder("r", parse_tools=True, reasoning=REASONING)
    thinking, text, calls = decoder.feed(f"I could write {WEATHER} here.</think>\n{TIME}")
    assert "<tool_call>" in thinking and text == ""
    _, _, more, finish = decoder.finish(FinishReason.STOP)
    assert [c.name for c in calls + more] == ["get_time"] and finish == "tool_calls"
