"""A request holds its model (a `Lease`) from before serving until its response is fully sent,
so the model manager never unloads a model under a request, not even mid-stream. Routes call
`with_model`, which hands the leased model to serving: nothing looks it up by name again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from hearth.keep_alive import KeepAliveInput, parse_keep_alive
from hearth.models.manager import Lease
from hearth.server.state import LoadedModel, ServerState

__all__ = ["state_of", "with_model"]

R = TypeVar("R", bound=Response)


def state_of(request: Request) -> ServerState:
    """The server's state, which the app keeps on `app.state.hearth`."""
    state: ServerState = request.app.state.hearth
    return state


class _LeasedStream(StreamingResponse):
    """A built stream that releases its model's lease however the stream ends: finished,
    cancelled by a disconnect (even before its first chunk), or failed."""

    def __init__(self, stream: StreamingResponse, lease: Lease[LoadedModel]) -> None:
        # Take over the stream exactly as serving built it (headers, body iterator, status).
        self.__dict__.update(stream.__dict__)
        self._lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_releasing_at_the_end(message: Message) -> None:
            # Released before the body's last message goes out: a client that acts on the model
            # (a delete, an unload) the moment its reply ends must find it idle.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._lease.release()
            await send(message)

        try:
            await super().__call__(scope, receive, send_releasing_at_the_end)
        finally:
            self._lease.release()  # a no-op when already released
            # A client that left while a chunk was being written cancels the response with the
            # body iterator waiting at its `yield`: closed here, its engine request is aborted
            # now rather than whenever the iterator is collected.
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()


async def with_model(
    state: ServerState,
    name: str,
    keep_alive: KeepAliveInput | None,
    serve: Callable[[LoadedModel], Awaitable[R]],
) -> R | StreamingResponse:
    """Serve with the model `name` held (loaded on demand) until the response is sent.
    `keep_alive` (the request's, validated) applies once the request ends."""
    seconds = None if keep_alive is None else parse_keep_alive(keep_alive)
    lease = await state.acquire(name, seconds)
    try:
        response = await serve(lease.model)
    except BaseException:
        lease.release()
        raise
    if isinstance(response, StreamingResponse):
        return _LeasedStream(response, lease)
    lease.release()  # the whole answer is in the body already
    return response
