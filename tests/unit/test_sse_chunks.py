"""The serialized-once content event must carry exactly what the pydantic chunk would."""

from __future__ import annotations

import json

import pytest

from hearth.protocol import openai as wire
from hearth.server.http.sse import ContentChunk as _ContentChunk
from hearth.server.http.sse import sse as _sse

TEXTS = [
    "hello",
    " world",
    'quote " and backslash \\ ',
    "new\nline\ttab\r",
    "control \x00\x01\x1f chars",
    "unicode é 日本語 🙂 \u2028 \u2029",
    "</script> & <b>",
    "",
]


def pydantic_event(text: str, index: int) -> bytes:
    chunk = wire.ChatCompletionChunk(
        id="chatcmpl-1",
        choices=[wire.ChunkChoice(delta=wire.ChunkDelta(content=text), index=index)],
        created=1,
        model='a "model" name',
        system_fingerprint="fp",
    )
    return _sse(chunk.model_dump_json(exclude={"usage"}))


def payload(event: bytes) -> object:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event[len(b"data: ") : -2])


@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("text", TEXTS)
def test_content_chunk_matches_pydantic(text: str, index: int) -> None:
    template = _ContentChunk(lambda marker: pydantic_event(marker, index))
    event = template.render(text)
    assert payload(event) == payload(pydantic_event(text, index))
    assert event.count(b"\n\n") == 1  # one SSE event: no raw newline can leak out of the JSON


def test_content_chunk_needs_its_marker() -> None:
    with pytest.raises(ValueError):
        _ContentChunk(lambda marker: b"data: {}\n\n")
