"""The Responses API's stored responses, in SQLite: `<HEARTH_HOME>/responses.sqlite3`.

A stored response is what `GET /v1/responses/{id}`, its `input_items` and a later request's
`previous_response_id` need: the response object as sent, this request's input items (each with
its `id`), and the whole conversation up to and including this response's output, which the
store keeps as opaque JSON. Each record holds its whole conversation, so deleting or expiring one
response never breaks a conversation continued from it.

With API keys, each response belongs to the key that created it (`owner`: a fingerprint of the
key, never the key): every read and delete is scoped to the caller's own, as OpenAI scopes them
to a project. Without keys the owner is NULL.

The store is synchronous (stdlib `sqlite3`); the server calls it through `asyncio.to_thread`.
One connection serves every thread, one call at a time (a lock); WAL keeps readers of the file
(another process, `sqlite3` on the command line) from blocking a write.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hearth.errors import InvalidRequestError, NotFoundError

__all__ = ["DB_FILENAME", "ResponseStore", "StoredResponse"]

DB_FILENAME = "responses.sqlite3"

_SCHEMA_VERSION = 2  # 2: responses.owner
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id                   TEXT PRIMARY KEY,
    created_at           REAL NOT NULL,
    model                TEXT NOT NULL,
    previous_response_id TEXT,
    response             TEXT NOT NULL,
    conversation         TEXT NOT NULL,
    owner                TEXT
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
CREATE TABLE IF NOT EXISTS input_items (
    response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    id          TEXT NOT NULL,
    item        TEXT NOT NULL,
    PRIMARY KEY (response_id, position)
);
CREATE INDEX IF NOT EXISTS input_items_by_id ON input_items (response_id, id);
"""


@dataclass(frozen=True)
class StoredResponse:
    """One stored response.

    `response` is the Response object's JSON as it was sent. `input_items` are the items of this
    request's `input` (a string input as one user message), in order, each a dict with an `id`,
    in the shapes `GET /v1/responses/{id}/input_items` lists. `conversation` is the whole
    conversation up to and including this response's output, in whatever JSON-able form the
    server continues a conversation from; the store never looks inside it.
    """

    id: str
    created_at: float  # seconds since the epoch
    model: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]
    previous_response_id: str | None = None
    owner: str | None = None  # the API key's fingerprint; None without keys


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ResponseStore:
    """Stored responses in one SQLite file, safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        conn = self._conn
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; fast commits
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            conn.close()
            self._conn = None
            raise RuntimeError(
                f"{path} was written by a newer Hearth (schema {version}, this one knows "
                f"{_SCHEMA_VERSION}); move it aside or upgrade"
            )
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
        if "owner" not in columns:  # a version 1 file: its responses were stored without keys
            conn.execute("ALTER TABLE responses ADD COLUMN owner TEXT")
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the response store is closed")
        return self._conn

    def put(self, record: StoredResponse) -> None:
        """Stores a response, replacing one with the same id."""
        items = [
            (record.id, position, str(item["id"]), _dumps(item))
            for position, item in enumerate(record.input_items)
        ]
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM responses WHERE id = ?", (record.id,))
                conn.execute(
                    "INSERT INTO responses (id, created_at, model, previous_response_id, "
                    "response, conversation, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.created_at,
                        record.model,
                        record.previous_response_id,
                        _dumps(record.response),
                        _dumps(record.conversation),
                        record.owner,
                    ),
                )
                conn.executemany(
                    "INSERT INTO input_items (response_id, position, id, item) VALUES (?, ?, ?, ?)",
                    items,
                )
                conn.execute("COMMIT")  # where a full disk shows
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT leaves it open
                    conn.execute("ROLLBACK")
                raise

    def get(self, response_id: str, owner: str | None = None) -> StoredResponse | None:
        """The response `owner` stored (None: stored without a key); None if there is none."""
        with self._lock:
            conn = self._db()
            row = conn.execute(
                "SELECT created_at, model, previous_response_id, response, conversation "
                "FROM responses WHERE id = ? AND owner IS ?",
                (response_id, owner),
            ).fetchone()
            if row is None:
                return None
            items = conn.execute(
                "SELECT item FROM input_items WHERE response_id = ? ORDER BY position",
                (response_id,),
            ).fetchall()
        created_at, model, previous_response_id, response, conversation = row
        return StoredResponse(
            id=response_id,
            created_at=created_at,
            model=model,
            response=json.loads(response),
            input_items=[json.loads(item) for (item,) in items],
            conversation=json.loads(conversation),
            previous_response_id=previous_response_id,
            owner=owner,
        )

    def delete(self, response_id: str, owner: str | None = None) -> bool:
        """Deletes `owner`'s response and its input items; False if there was none."""
        with self._lock:
            cursor = self._db().execute(
                "DELETE FROM responses WHERE id = ? AND owner IS ?", (response_id, owner)
            )
        return cursor.rowcount > 0

    def input_items(
        self,
        response_id: str,
        *,
        after: str | None = None,
        before: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        owner: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A page of a response's input items, as `GET /v1/responses/{id}/input_items` lists
        them: in `order` (`desc`: the last item first), only those after the item `after` and
        before the item `before` in that order, at most `limit` (1 to 100). `has_more` says
        whether more items follow the page in that direction (for `before` alone, precede it).

        Raises NotFoundError for an unknown response, and InvalidRequestError (naming the
        parameter) for a limit out of range or a cursor that is not one of its items.
        """
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", param="limit")
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
        with self._lock:
            conn = self._db()
            known = conn.execute(
                "SELECT 1 FROM responses WHERE id = ? AND owner IS ?", (response_id, owner)
            )
            if known.fetchone() is None:
                raise NotFoundError(
                    f"Response with id '{response_id}' not found.", param="response_id"
                )
            where = ["response_id = ?"]
            args: list[Any] = [response_id]
            # In listing order, "after X" is a later position for asc and an earlier one for desc.
            later, earlier = (">", "<") if order == "asc" else ("<", ">")
            for name, cursor_id, comparison in (
                ("after", after, later),
                ("before", before, earlier),
            ):
                if cursor_id is None:
                    continue
                found = conn.execute(
                    "SELECT MIN(position) FROM input_items WHERE response_id = ? AND id = ?",
                    (response_id, cursor_id),
                ).fetchone()[0]
                if found is None:
                    raise InvalidRequestError(
                        f"No input item with id '{cursor_id}' in response '{response_id}'.",
                        param=name,
                    )
                where.append(f"position {comparison} ?")
                args.append(found)
            # With `before` alone, the page is the items just before the cursor: read backwards
            # from it, then turn the page around.
            backwards = before is not None and after is None
            direction = "ASC" if (order == "asc") != backwards else "DESC"
            rows = conn.execute(
                f"SELECT item FROM input_items WHERE {' AND '.join(where)} "
                f"ORDER BY position {direction} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        has_more = len(rows) > limit
        page = [json.loads(item) for (item,) in rows[:limit]]
        if backwards:
            page.reverse()
        return page, has_more

    def expire(self, max_age_s: float, now: float | None = None) -> int:
        """Deletes responses created more than `max_age_s` seconds before `now`; returns how
        many."""
        cutoff = (time.time() if now is None else now) - max_age_s
        with self._lock:
            cursor = self._db().execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))
        return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
