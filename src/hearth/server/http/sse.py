"""Server-sent events: the framing every streaming API shares, and the hot path's cached event."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from hearth.errors import HearthError
from hearth.server.http.errors import sse_error_event

__all__ = ["SSE_DONE", "ContentChunk", "named_event", "sse", "streaming_response"]

logger = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


def named_event(name: str, payload: str) -> bytes:
    """An event with an `event:` line (the Responses and Messages APIs name each event)."""
    return b"event: " + name.encode() + b"\ndata: " + payload.encode() + b"\n\n"


class ContentChunk:
    """A stream's text-only event, serialized once: each token then costs one `json.dumps` of
    its text instead of building and dumping the pydantic model (the hot path of a stream)."""

    __slots__ = ("_head", "_tail")

    def __init__(self, render_with: Callable[[str], bytes]) -> None:
        marker = f"hearth-content-{uuid.uuid4().hex}"
        event = render_with(marker)
        self._head, found, self._tail = event.partition(json.dumps(marker).encode())
        if not found:
            raise ValueError("the rendered event does not hold the marker as a JSON string")

    def render(self, text: str) -> bytes:
        return self._head + json.dumps(text, ensure_ascii=False).encode() + self._tail


async def _guarded(
    events: AsyncIterator[bytes], on_error: Callable[[HearthError], bytes]
) -> AsyncIterator[bytes]:
    """A failure after the headers went out becomes an error event, then the stream ends."""
    try:
        async for event in events:
            yield event
    except HearthError as error:
        yield on_error(error)
    except Exception:
        logger.exception("stream failed after its headers were sent")
        yield on_error(HearthError("The server had an error while streaming."))


def _error_then_done(error: HearthError) -> bytes:
    """OpenAI's streams end with [DONE] even after an error event: a client reading to the end
    sees a whole stream, not a cut socket."""
    return sse_error_event(error) + SSE_DONE


def streaming_response(
    events: AsyncIterator[bytes], on_error: Callable[[HearthError], bytes] = _error_then_done
) -> StreamingResponse:
    return StreamingResponse(
        _guarded(events, on_error), media_type="text/event-stream", headers=_SSE_HEADERS
    )
