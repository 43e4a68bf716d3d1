"""A lean streaming client for the benchmark: a blocking socket per request, parsed afterwards.

The benchmark's clients run on the same cores as the server they measure, so every microsecond a
client spends on an event is taken from the server's compute threads. On the 2-core reference
machine httpx cost about 0.75 ms of CPU per streamed token, an asyncio + httptools client about
0.34 ms. This one does nothing per token but `recv` and note the time: its thread sleeps in the
kernel until bytes come, and the HTTP framing and SSE events are parsed once the response has
ended, each event stamped with the time its bytes arrived. Both servers are measured through it.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httptools

__all__ = ["SSEResponse", "TimedEvent", "parse_response", "post_sse"]

_RECV_BYTES = 65536


@dataclass
class TimedEvent:
    """One SSE `data:` value and the `perf_counter()` time its last byte arrived."""

    at: float
    data: bytes


@dataclass
class SSEResponse:
    status_code: int
    body: bytes  # the whole decoded body (for an error's message)
    events: list[TimedEvent] = field(default_factory=list)
    complete: bool = False  # the HTTP message ended as its framing said


class _Parser:
    """httptools callbacks: the body's pieces, each with the arrival time of its read."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.now = 0.0
        self.pieces: list[tuple[float, bytes]] = []
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.pieces.append((self.now, body))

    def on_message_complete(self) -> None:
        self.complete = True


def parse_response(reads: list[tuple[float, bytes]]) -> SSEResponse:
    """An HTTP response from its raw reads, each `(arrival time, bytes)`, in order."""
    state = _Parser()
    for now, data in reads:
        state.now = now
        state.parser.feed_data(data)
    status = state.parser.get_status_code()
    response = SSEResponse(status, b"".join(piece for _, piece in state.pieces))
    response.complete = state.complete
    buffer = b""
    for now, piece in state.pieces:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        # Comments (": ping") and other fields are skipped.
        response.events.extend(
            TimedEvent(now, line[5:].strip()) for line in lines if line.startswith(b"data:")
        )
    return response


def post_sse(
    host: str, port: int, path: str, body: dict[str, Any], timeout_s: float = 600.0
) -> tuple[float, SSEResponse]:
    """POST `body` as JSON, read until the server closes, and return the time the request was
    sent with the parsed response. Blocking: run it on a thread of its own."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    reads: list[tuple[float, bytes]] = []
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = time.perf_counter()
        sock.sendall(head + payload)
        # The hot loop: nothing but the read and its time.
        recv, clock, append = sock.recv, time.perf_counter, reads.append
        while data := recv(_RECV_BYTES):
            append((clock(), data))
    return sent, parse_response(reads)
