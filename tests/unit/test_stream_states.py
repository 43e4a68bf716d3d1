"""The stream renderers' state machines, one event at a time: chat completions' (what each step
sends for its choice, what an error after text sends for the choices still open), Anthropic
Messages' (content blocks opened, numbered and closed), the Responses API's (output items added,
numbered and done; the reply is the same state at its end) and Ollama's NDJSON lines (the same
for /api/chat and /api/generate). The Responses and Ollama APIs have no `n`: one choice each."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from hearth.engine.types import RequestOutput, TokenLogprob
from hearth.errors import EngineError
from hearth.server.anthropic import messages
from hearth.server.core.conversation import ToolCall
from hearth.server.core.turns import Step
from hearth.server.ollama import serving as ollama
from hearth.server.openai.chat import ChatStream, ChunkOut, on_cut_short, on_step
from hearth.server.responses import serving as responses


def _step(index: int, text: str = "", **fields: Any) -> Step:
    output = RequestOutput(
        text,
        prompt_tokens=3,
        completion_tokens=1,
        cached_tokens=0,
        index=index,
        logprobs=fields.pop("logprobs", ()),
    )
    return Step(index, 0, output, text, fields.pop("calls", []), **fields)


def test_a_choice_begins_with_its_role_then_sends_plain_text_through_the_fast_path() -> None:
    stream = ChatStream(parse_tools=False)
    first = on_step(stream, _step(0, "Hi"))
    assert [(o.delta.role, o.text) for o in first] == [("assistant", None), (None, "Hi")]
    assert on_step(stream, _step(0, " there")) == [ChunkOut(0, text=" there")]
    assert on_step(stream, _step(0, finish="stop")) == [ChunkOut(0, finish="stop")]
    assert stream.finished == {0}


def test_thinking_text_and_calls_numbered_per_choice() -> None:
    stream = ChatStream(parse_tools=True)
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    out = on_step(stream, _step(1, "I will look.", reasoning="Hm.", calls=[call, call]))
    assert out[1].delta.reasoning_content == "Hm."
    assert out[2].delta.content == "I will look."  # with tools, text goes whole, not templated
    assert [o.delta.tool_calls[0].index for o in out[3:] if o.delta.tool_calls] == [0, 1]
    assert stream.calls_sent == {1: 2}


def test_an_error_after_text_ends_only_the_choices_still_open() -> None:
    stream = ChatStream(parse_tools=False)
    on_step(stream, _step(0, "a", finish="stop"))
    on_step(stream, _step(1, "b"))
    on_step(stream, _step(2, "c"))
    assert on_cut_short(stream) == [ChunkOut(1, finish="length"), ChunkOut(2, finish="length")]
    assert stream.totals.prompt_tokens == 3


def test_messages_blocks_open_in_turn_and_take_the_next_index() -> None:
    stream = messages.MessageStream("msg_1", "m")
    call = ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}')
    kinds = [
        [(e.type, getattr(e, "index", None)) for e in messages.on_step(stream, step)]
        for step in (
            _step(0, reasoning="Hm."),
            _step(0, "I will look."),
            _step(0, calls=[call], finish="tool_calls"),
        )
    ]
    assert kinds == [
        [
            ("message_start", None),
            ("ping", None),
            ("content_block_start", 0),
            ("content_block_delta", 0),
        ],
        [("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1)],
        [
            ("content_block_stop", 1),
            ("content_block_start", 2),
            ("content_block_delta", 2),
            ("content_block_stop", 2),
            ("message_delta", None),
            ("message_stop", None),
        ],
    ]


def test_an_empty_message_is_one_empty_text_block() -> None:
    stream = messages.MessageStream("msg_1", "m")
    events = messages.on_step(stream, _step(0, finish="stop"))
    assert [(e.type, getattr(e, "index", None)) for e in events][2:4] == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
    ]


# -- the Responses API ----------------------------------------------------------------------------

CALL = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')


def _response_stream(**fields: Any) -> responses.ResponseStream:
    """A stream whose ids count up, so that two runs over the same steps build equal items."""
    numbers = itertools.count()
    return responses.ResponseStream(new_id=lambda prefix: f"{prefix}_{next(numbers)}", **fields)


def _played(stream: responses.ResponseStream, steps: Iterable[Step]) -> list[Any]:
    """Every event of a stream over `steps` up to its end, numbered from 2 (after the two that
    announce the response)."""
    stream.sequence = 2
    events = [event for step in steps for event in responses.on_step(stream, step)]
    return events + responses.on_end(stream)


async def _scripted(steps: Iterable[Step], error: Exception | None = None) -> AsyncIterator[Step]:
    for step in steps:
        yield step
    if error is not None:
        raise error


THINK_TEXT_CALL = [
    _step(0, reasoning="Let me "),
    _step(0, reasoning="check."),
    _step(0, "I will look."),
    _step(0, calls=[CALL], finish="tool_calls"),
]


def test_responses_thinking_text_and_a_call_are_items_added_and_done_in_turn() -> None:
    stream = _response_stream()
    events = _played(stream, THINK_TEXT_CALL)
    assert [(e.type, getattr(e, "output_index", None)) for e in events] == [
        ("response.output_item.added", 0),
        ("response.reasoning_text.delta", 0),
        ("response.reasoning_text.delta", 0),
        ("response.reasoning_text.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.content_part.added", 1),
        ("response.output_text.delta", 1),
        ("response.output_text.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2),
    ]
    assert [e.sequence_number for e in events] == list(range(2, 2 + len(events)))
    reasoning, message, call = stream.output
    assert (reasoning.content[0].text, reasoning.status) == ("Let me check.", "completed")
    assert (message.content[0].text, message.status) == ("I will look.", "completed")
    assert (call.name, call.arguments, call.call_id) == ("get_weather", CALL.arguments, "call_1")
    assert stream.status == "completed" and stream.calls == [CALL]
    final = responses.on_final(stream, responses.wire.Response.model_construct())
    assert (final.type, final.sequence_number) == ("response.completed", 2 + len(events))


def test_responses_reply_is_the_streams_final_state() -> None:
    streamed = _response_stream(encrypted_reasoning=True)
    events = _played(streamed, THINK_TEXT_CALL)
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done == streamed.output  # each item as its done event said it
    assert done[0].encrypted_content is not None

    replied = _response_stream(encrypted_reasoning=True)
    asyncio.run(responses.run_to_end(replied, _scripted(THINK_TEXT_CALL)))
    assert replied.output == streamed.output
    assert (replied.finish, replied.totals, replied.calls) == (
        streamed.finish,
        streamed.totals,
        streamed.calls,
    )


def test_responses_text_after_a_call_is_a_message_of_its_own() -> None:
    stream = _response_stream()
    steps = [_step(0, "I will look."), _step(0, calls=[CALL]), _step(0, "Done."), _step(0, " Bye.")]
    events = _played(stream, steps)
    assert [(item.type, item.id) for item in stream.output] == [
        ("message", "msg_0"),
        ("function_call", "fc_1"),
        ("message", "msg_2"),
    ]
    assert [part.text for part in stream.output[2].content] == ["Done. Bye."]
    deltas = [(e.item_id, e.delta) for e in events if e.type == "response.output_text.delta"]
    assert deltas == [("msg_0", "I will look."), ("msg_2", "Done."), ("msg_2", " Bye.")]
    assert "".join(stream.text) == "I will look.Done. Bye."  # the history keeps it all


def test_responses_cut_by_the_token_limit_leave_the_open_items_incomplete() -> None:
    stream = _response_stream()
    _played(stream, [_step(0, reasoning="Hm."), _step(0, "Half an ans", finish="length")])
    assert [item.status for item in stream.output] == ["completed", "incomplete"]
    assert stream.status == "incomplete"
    final = responses.on_final(stream, responses.wire.Response.model_construct())
    assert final.type == "response.incomplete"


def test_responses_with_neither_text_nor_calls_answer_one_empty_message() -> None:
    stream = _response_stream()
    events = _played(stream, [_step(0, reasoning="Hm.", finish="stop")])
    assert [e.type for e in events][-5:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert [item.type for item in stream.output] == ["reasoning", "message"]
    assert stream.output[1].content[0].text == ""


def test_responses_error_after_text_is_one_event_numbered_on() -> None:
    stream = _response_stream()
    events = responses.on_start(stream, responses.wire.Response.model_construct())
    events += responses.on_step(stream, _step(0, "Hello"))
    error = responses.on_error(stream, EngineError("The model could not decode this request"))
    assert [e.sequence_number for e in events + error] == list(range(len(events) + 1))
    assert (error[0].code, error[0].message) == (
        "engine_error",
        "The model could not decode this request",
    )
    assert stream.output == [None]  # the message was never done


# -- Ollama's /api/chat and /api/generate ---------------------------------------------------------


def _lines(stream: ollama.OllamaStream, steps: Iterable[Step]) -> list[ollama.LineOut]:
    return [out for step in steps for out in ollama.on_step(stream, step)]


def test_ollama_sends_thinking_and_text_as_they_come_and_the_calls_at_the_end() -> None:
    stream = ollama.OllamaStream()
    lines = _lines(stream, THINK_TEXT_CALL)
    assert lines == [
        ollama.LineOut(thinking="Let me "),
        ollama.LineOut(thinking="check."),
        ollama.LineOut("I will look."),
        ollama.LineOut(calls=(CALL,)),
        ollama.LineOut(done_reason="stop"),  # Ollama has no "tool_calls" reason
    ]


def test_ollama_reply_is_the_streams_final_state() -> None:
    clock = ollama._Clock()
    streamed = ollama.OllamaStream()
    sent = [
        json.loads(ollama._chat_line(streamed, out, "m", clock))
        for out in _lines(streamed, THINK_TEXT_CALL)
    ]
    replied = ollama.OllamaStream()
    asyncio.run(ollama.run_to_end(replied, _scripted(THINK_TEXT_CALL), clock))
    assert replied == streamed
    reply = ollama.chat_reply(replied, "m", clock).model_dump(mode="json", exclude_none=True)
    folded = {
        "content": "".join(line["message"]["content"] for line in sent),
        "thinking": "".join(line["message"].get("thinking", "") for line in sent),
        "tool_calls": [c for line in sent for c in line["message"].get("tool_calls", [])],
    }
    assert folded == {key: reply["message"][key] for key in folded}
    assert sent[-1]["done_reason"] == reply["done_reason"] == "stop"
    assert sent[-1]["eval_count"] == reply["eval_count"] == 1


def test_ollama_logprobs_go_out_only_when_asked() -> None:
    entry = TokenLogprob(72, b"H", -0.5)
    steps = [_step(0, "H", logprobs=(entry,)), _step(0, finish="length", logprobs=(entry,))]
    asked = ollama.OllamaStream(logprobs=True)
    assert _lines(asked, steps) == [
        ollama.LineOut("H", logprobs=(entry,)),
        ollama.LineOut(logprobs=(entry,)),
        ollama.LineOut(done_reason="length"),
    ]
    reply = ollama.generate_reply(asked, "m", ollama._Clock())
    assert reply.response == "H" and reply.logprobs is not None and len(reply.logprobs) == 2
    unasked = ollama.OllamaStream()
    assert _lines(unasked, steps) == [ollama.LineOut("H"), ollama.LineOut(done_reason="length")]
    assert ollama.generate_reply(unasked, "m", ollama._Clock()).logprobs is None


def test_ollama_error_after_text_ends_with_the_error_line() -> None:
    async def sent() -> list[bytes]:
        stream, clock = ollama.OllamaStream(), ollama._Clock()
        steps = _scripted([_step(0, "Hello")], EngineError("The model could not decode"))
        lines = ollama._stream_lines(stream, steps, ollama._generate_line, "m", clock)
        return [line async for line in ollama._guarded(lines)]

    first, last = [json.loads(line) for line in asyncio.run(sent())]
    assert (first["response"], first["done"]) == ("Hello", False)
    assert last == {"error": "The model could not decode"}
