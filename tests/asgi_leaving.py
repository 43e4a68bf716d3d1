"""A client that leaves a streamed response, as Starlette sees it (ASGI spec 2.3: the response
listens for `http.disconnect`): the request body is read, the first body chunk goes out, and
the client leaves, either while that write is still blocked (its socket takes nothing more) or
between writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["leave_a_stream"]


async def leave_a_stream(
    response: Callable[[Any, Any, Any], Coroutine[Any, Any, None]], *, mid_write: bool
) -> None:
    """Run `response` (an ASGI app) until the client has left and the call has returned."""
    left, writing = asyncio.Event(), asyncio.Event()
    body_read = False

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            writing.set()
            if mid_write:
                await asyncio.Event().wait()  # a write that never completes

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST"}
    call = asyncio.create_task(response(scope, receive, send))
    await writing.wait()
    left.set()
    await asyncio.wait_for(call, 5)
