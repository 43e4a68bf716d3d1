"""A streamed answer gives its model back, and ends its engine request, the moment it ends."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from hearth.server.http.leases import _LeasedStream
from tests.asgi_leaving import leave_a_stream


class _Lease:
    released = 0

    def release(self) -> None:
        self.released += 1


def _scenario(write_blocks: bool) -> tuple[list[str], _Lease]:
    ended: list[str] = []
    seen: list[str] = []  # what had ended before the event loop shut down
    lease = _Lease()

    async def engine_request() -> AsyncIterator[bytes]:  # stands for Engine.generate
        try:
            while True:
                await asyncio.sleep(0)
                yield b"data: token\n\n"
        finally:
            ended.append("engine request ended")

    async def rendered() -> AsyncIterator[bytes]:  # stands for a renderer over it
        async for event in engine_request():
            yield event

    async def run() -> None:
        response = _LeasedStream(StreamingResponse(rendered()), lease)  # type: ignore[arg-type]
        await leave_a_stream(response, mid_write=write_blocks)
        for _ in range(3):  # the inner generator's own close, scheduled by the outer's
            await asyncio.sleep(0)
        # Looked at here, with the response still referenced: asyncio.run's shutdown closes
        # every unfinished generator, which would hide a leak.
        seen.extend(ended)
        assert response.body_iterator is not None

    gc.disable()  # nothing may be closed by a collection behind the test's back
    try:
        asyncio.run(run())
    finally:
        gc.enable()
    return seen, lease


def test_a_client_leaving_mid_write_ends_the_engine_request_at_once() -> None:
    ended, lease = _scenario(write_blocks=True)
    assert ended == ["engine request ended"]
    assert lease.released == 1


def test_a_client_leaving_between_tokens_ends_it_too() -> None:
    ended, lease = _scenario(write_blocks=False)
    assert ended == ["engine request ended"]
    assert lease.released == 1
