"""One HTTP request carried from the ingress to a replica's Hearth app and its answer carried back,
over Ray calls instead of a socket.

The ingress sends a `RequestHead` and the body; the replica runs Hearth's ASGI app on them and
yields a `ResponseHead`, then the body in the chunks the app sent (SSE events as they stream).
When the ingress cancels the call (its client left), the app receives `http.disconnect`, exactly
as under uvicorn, so Hearth aborts the engine request and frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

__all__ = ["RequestHead", "ResponseHead", "run_asgi"]

# After its client left, how long the app gets to notice and abort its engine request.
_ABORT_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    client: tuple[str, int] | None = None
    scheme: str = "http"
    server: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: list[tuple[bytes, bytes]]


def _scope(head: RequestHead) -> dict[str, Any]:
    return {
        "type": "http",
        # 2.3: Starlette's streaming responses then listen for http.disconnect, which is how the
        # ingress's cancellation reaches Hearth.
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": head.method,
        "scheme": head.scheme,
        "path": head.path,
        "raw_path": head.path.encode(),
        "query_string": head.query_string,
        "root_path": "",
        "headers": head.headers,
        "client": head.client,
        "server": head.server,
        "state": {},
    }


async def run_asgi(
    app: ASGIApp, head: RequestHead, body: bytes
) -> AsyncGenerator[ResponseHead | bytes, None]:
    """Run `app` on one request: yields the ResponseHead, then non-empty body chunks. Closing
    or cancelling the iterator disconnects the request; the app's task is then awaited, so the
    engine request is aborted before this returns."""
    disconnected = asyncio.Event()
    body_sent = False
    sent: asyncio.Queue[Message | None] = asyncio.Queue()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if disconnected.is_set():
            raise OSError("the client disconnected")
        sent.put_nowait(message)

    async def call_app() -> None:
        await app(_scope(head), receive, send)

    task = asyncio.create_task(call_app())
    task.add_done_callback(lambda _: sent.put_nowait(None))
    started = False
    try:
        while (message := await sent.get()) is not None:
            if message["type"] == "http.response.start":
                started = True
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                yield ResponseHead(int(message["status"]), headers)
            elif message["type"] == "http.response.body":
                if chunk := message.get("body", b""):
                    yield bytes(chunk)
                if not message.get("more_body", False):
                    break
        if not started:
            await task  # the app's own exception
            raise RuntimeError(f"{head.method} {head.path} ended without a response")
    finally:
        disconnected.set()
        if not task.done():
            _, pending = await asyncio.wait({task}, timeout=_ABORT_GRACE_S)
            for late in pending:
                late.cancel()
        elif not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()  # retrieved: an app that failed after answering is logged there
