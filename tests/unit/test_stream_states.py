"""The stream renderers' state machines, one event at a time: chat completions' (what each step
sends for its choice, what an error after text sends for the choices still open) and Anthropic
Messages' (content blocks opened, numbered and closed)."""

from __future__ import annotations

from hearth.engine.types import RequestOutput
from hearth.server.anthropic import messages
from hearth.server.core.conversation import ToolCall
from hearth.server.core.turns import Step
from hearth.server.openai.chat import ChatStream, ChunkOut, on_cut_short, on_step


def _step(index: int, text: str = "", **fields: object) -> Step:
    output = RequestOutput(text, prompt_tokens=3, completion_tokens=1, cached_tokens=0, index=index)
    return Step(index, 0, output, text, fields.pop("calls", []), **fields)  # type: ignore[arg-type]


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
