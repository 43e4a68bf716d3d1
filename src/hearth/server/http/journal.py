"""The request journal (`--journal DIR`, opt-in): one JSON line per HTTP request, rotated by size.

`JournalMiddleware` times each request and writes its line once the response is sent, a stream
included. What only the generation knows (the model, the tokens, the finish reason, the time to
first token) is filled in by `note_generation` from `server/core/turns.py`, through a context
variable the middleware sets: the request's task and the tasks it starts share the entry. No
header is written, so never a key; bodies only with `--journal-bodies`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "JOURNAL_FILE",
    "Journal",
    "JournalMiddleware",
    "journal_active",
    "note_generation",
    "read_entries",
]

logger = logging.getLogger(__name__)

JOURNAL_FILE = "requests.jsonl"
MAX_FILE_BYTES = 10 * 2**20  # then requests.jsonl becomes requests.jsonl.1, and so on
KEPT_FILES = 5
_BODY_LIMIT = 64 * 1024  # journaled body bytes, at most

_entry: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "hearth_journal_entry", default=None
)


class Journal:
    """Appends lines to DIR/requests.jsonl; past MAX_FILE_BYTES the file is rotated."""

    def __init__(
        self, directory: Path, *, bodies: bool = False, max_bytes: int = MAX_FILE_BYTES
    ) -> None:
        self.directory = directory
        self.bodies = bodies
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / JOURNAL_FILE
        self._lock = threading.Lock()
        self._file = self._path.open("a", encoding="utf-8")

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:  # a request that ended after the shutdown closed the journal
                return
            if self._file.tell() + len(line) > self.max_bytes and self._file.tell() > 0:
                self._rotate()
            self._file.write(line)
            self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(KEPT_FILES - 1, 0, -1):
            older = self.directory / f"{JOURNAL_FILE}.{index}"
            if older.exists():
                older.replace(self.directory / f"{JOURNAL_FILE}.{index + 1}")
        self._path.replace(self.directory / f"{JOURNAL_FILE}.1")
        self._file = self._path.open("a", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def journal_active() -> bool:
    """Whether this request is journaled (checked once per generation, not per token)."""
    return _entry.get() is not None


def note_generation(
    *,
    request_id: str,
    model: str,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    finish_reason: str | None,
    first_token_s: float | None,
) -> None:
    """What a generation adds to its request's journal line (a no-op with no journal)."""
    entry = _entry.get()
    if entry is None:
        return
    entry.update(
        request_id=request_id,
        model=model,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        completion_tokens=completion_tokens,
    )
    # The turn's own finish (note_finish) wins: a tool call ends it before the engine does.
    entry.setdefault("finish_reason", finish_reason)
    if first_token_s is not None:
        entry["ttft_ms"] = round((first_token_s - entry["_start"]) * 1000, 1)


def note_ignored(fields: Iterable[str]) -> None:
    """Fields the request sent that Hearth accepted and ignored (docs of each API say which)."""
    entry = _entry.get()
    if entry is not None:
        entry["ignored_fields"] = sorted({*entry.get("ignored_fields", ()), *fields})


def note_finish(finish_reason: str) -> None:
    """How the turn ended, as the API tells the client ("stop", "length", "tool_calls")."""
    entry = _entry.get()
    if entry is not None:
        entry["finish_reason"] = finish_reason


class JournalMiddleware:
    def __init__(self, app: ASGIApp, journal: Journal) -> None:
        self.app = app
        self.journal = journal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "id": uuid.uuid4().hex[:12],
            "method": scope["method"],
            "route": scope["path"],
            "_start": start,
        }
        token = _entry.set(entry)
        request_body: list[bytes] = []
        response_body: list[bytes] = []
        keep_bodies = self.journal.bodies

        async def recording_receive() -> Message:
            message = await receive()
            if keep_bodies and message["type"] == "http.request":
                request_body.append(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body" and keep_bodies:
                response_body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, recording_receive, recording_send)
        finally:
            _entry.reset(token)
            entry.pop("_start")
            entry.setdefault("status", 499)  # the client left before any answer
            entry["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
            if keep_bodies:
                entry["request_body"] = _text(b"".join(request_body))
                entry["response_body"] = _text(b"".join(response_body))
            try:
                self.journal.write(entry)
            except OSError:
                logger.exception("could not write the request journal")


def _text(body: bytes) -> str:
    return body[:_BODY_LIMIT].decode("utf-8", "replace")


def read_entries(directory: Path, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` entries, oldest first, across the rotated files."""
    files = [directory / JOURNAL_FILE] + [
        directory / f"{JOURNAL_FILE}.{i}" for i in range(1, KEPT_FILES + 1)
    ]
    entries: list[dict[str, Any]] = []
    for path in files:
        if len(entries) >= limit or not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = [json.loads(line) for line in lines if line.strip()] + entries
    return entries[-limit:]
