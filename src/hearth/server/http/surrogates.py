"""Lone surrogates: a JSON string may escape half of a UTF-16 pair (`"\\ud800"`), which is valid
JSON but no Unicode text. Python keeps it as a str that no UTF-8 encoder takes, so it would
fail deep inside templating, tokenizing or the response store. `LoneSurrogateCheck` refuses such
a body with 400 `invalid_value` naming the field, before any route sees it.

Only a body whose bytes hold a surrogate escape (`\\uD800`-`\\uDFFF`) is parsed here; a valid
pair (an emoji sent as `\\ud83d\\ude00`) is parsed too and passes, since `json.loads` joins it
into one character. Every other body goes on untouched.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.errors import HearthError, InvalidRequestError
from hearth.server.http.errors import refusal

__all__ = ["LoneSurrogateCheck", "lone_surrogate_path"]

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Above this a body is parsed and walked on a worker thread, not on the event loop.
_INLINE_BYTES = 256 * 1024


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate_path(value: Any) -> tuple[str | None, bool] | None:
    """The first string (or object key) in parsed JSON that is no Unicode text: its field path
    ('messages[0].content', None for the body itself) and whether it is a key. None if all is
    text."""
    stack: list[tuple[Any, str | None]] = [(value, None)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return path, False
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                if not _is_text(key):
                    return path, True
                children.append((child, f"{path}.{key}" if path else key))
            stack.extend(reversed(children))  # depth first, in the body's order
        elif isinstance(item, list):
            prefix = path or ""
            stack.extend((child, f"{prefix}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def _find(body: bytes) -> tuple[str | None, bool] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or too deep for Python: the route says so
        return None
    return lone_surrogate_path(parsed)


def _invalid_value(found: tuple[str | None, bool]) -> InvalidRequestError:
    param, is_key = found
    where = f"'{param}'" if param else "the request body"
    what = "one of its keys" if is_key else "its text"
    return InvalidRequestError(
        f"Invalid value for {where}: {what} holds an unpaired UTF-16 surrogate "
        "(a \\uD800-\\uDFFF escape without its pair), which is not Unicode text.",
        param=param,
        code="invalid_value",
    )


class LoneSurrogateCheck:
    """Reads a request's body whole (it sits inside `BodySizeLimit`, so the body is bounded),
    refuses it when it carries a lone surrogate, and otherwise hands the same bytes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or path.startswith("/api/blobs/")  # a model file, not JSON
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client left mid-body
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HearthError as exc:  # BodySizeLimit's 413
            await refusal(exc, scope)(scope, receive, send)
            return
        body = b"".join(chunks)
        del chunks
        if _SURROGATE_ESCAPE.search(body):
            large = len(body) > _INLINE_BYTES
            found = await asyncio.to_thread(_find, body) if large else _find(body)
            if found is not None:
                await refusal(_invalid_value(found), scope)(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, as before

        await self.app(scope, replay, send)
