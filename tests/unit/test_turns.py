"""A turn's output read back as text and whole tool calls: repeats end the turn, cut calls never
reach a client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from hearth.engine.types import FinishReason, RequestOutput
from hearth.server.tools import render_call
from hearth.server.turns import Step, TurnDecoder, decode_steps

WEATHER = render_call("get_weather", json.dumps({"city": "Paris"}))
TIME = render_call("get_time", json.dumps({"zone": "CET"}))


def feed_all(decoder: TurnDecoder, text: str, reason: FinishReason, piece: int = 3) -> tuple:
    shown, calls = "", []
    for start in range(0, len(text), piece):
        more_text, more_calls = decoder.feed(text[start : start + piece])
        shown += more_text
        calls += more_calls
    tail, last_calls, finish = decoder.finish(reason)
    return shown + tail, calls + last_calls, finish


def test_plain_text_passes_through() -> None:
    decoder = TurnDecoder("r", parse_tools=False)
    assert decoder.feed("Hello") == ("Hello", [])
    assert decoder.finish(FinishReason.STOP) == ("", [], "stop")
    assert decoder.finish(FinishReason.LENGTH)[2] == "length"


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
        return [step async for step in decode_steps(outputs(), "r", parse_tools=True)]

    steps = asyncio.run(run())
    assert steps[-1].finish == "tool_calls"
    assert sum(len(s.calls) for s in steps) == 1
    assert read == [0, 1, 2]  # nothing after the repeat was read: the request was aborted
    assert closed == [True]
