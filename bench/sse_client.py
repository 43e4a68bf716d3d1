"""A lean streaming client for the benchmark: asyncio and httptools, one connection per request.

The benchmark's clients run on the same cores as the server they measure, so every microsecond a
client spends parsing an event is taken from the server's compute threads. httpx's pure-Python
HTTP/1.1 stack cost about 0.75 ms of CPU per streamed token on the 2-core reference machine, this
client about 0.2 ms. Both servers are measured through it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httptools

__all__ = ["SSEResponse", "post_sse"]

_END = object()


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.chunks: asyncio.Queue[bytes | object] = asyncio.Queue()

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the server closed the connection"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if not self.status.done():
            self.status.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        self.chunks.put_nowait(_END)

    def _fail(self, exc: BaseException) -> None:
        if not self.status.done():
            self.status.set_exception(exc)
        self.chunks.put_nowait(_END)


class SSEResponse:
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol, status: int) -> None:
        self._transport = transport
        self._protocol = protocol
        self.status_code = status

    async def body(self) -> bytes:
        parts = []
        while (chunk := await self._protocol.chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            parts.append(chunk)
        return b"".join(parts)

    async def data(self) -> AsyncIterator[bytes]:
        """Each `data:` field's value, in order; comments and other fields are skipped."""
        buffer = b""
        while (chunk := await self._protocol.chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    yield line[5:].strip()

    def close(self) -> None:
        self._transport.close()


async def post_sse(host: str, port: int, path: str, body: dict[str, Any]) -> SSEResponse:
    """POST `body` as JSON and return once the response headers are in."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Protocol, host, port)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    transport.write(head + payload)
    try:
        status = await protocol.status
    except BaseException:
        transport.close()
        raise
    return SSEResponse(transport, protocol, status)
