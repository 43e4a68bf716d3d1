"""A JSON body is JSON whatever its content type says, as Ollama reads it.

Ollama's own documentation sends `curl http://localhost:11434/api/generate -d '{...}'`, and curl
labels that body `application/x-www-form-urlencoded`; other clients send `text/plain` or no type
at all. FastAPI parses a body as JSON only when it is labelled so, so this middleware relabels
every request body but a blob upload's (`/api/blobs`, raw bytes) as `application/json`; a body
that is not JSON still gets the route's 400.

The strict content type used to keep a foreign web page's "simple" request (a form post, which
needs no CORS preflight) out; `OriginCheck` (server/http/origins.py) refuses those first, so this
sits inside it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["JsonBodies"]

_JSON = b"application/json"
_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JsonBodies:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _WITH_BODY
            and not scope["path"].startswith("/api/blobs/")
        ):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", _JSON)]}
        await self.app(scope, receive, send)
