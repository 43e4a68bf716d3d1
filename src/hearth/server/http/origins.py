"""Cross-site writes: a web page may send a "simple" request (a POST with `Content-Type:
text/plain`, a form) to any server without a CORS preflight; the browser only hides the answer.
The request itself still runs: it could fill HEARTH_HOME with blobs or create models. So every
request but GET, HEAD and OPTIONS that carries a browser's `Origin` header is refused with 403
unless that origin is allowed:

- the server's own (the web page at /: an origin whose host and port are the `Host` header's),
- one of --cors-origin ('*': any),
- by default, as Ollama's default OLLAMA_ORIGINS: loopback origins on any port (another local
  app's page), and the schemes desktop apps and editors load their pages from.

`Origin: null` (a sandboxed frame, a page from file://, a redirect) is allowed by none of these.
A request without `Origin` comes from no browser page (curl, the SDKs) and passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.errors import PermissionDeniedError
from hearth.server.http.errors import refusal
from hearth.server.http.hosts import is_loopback_host

__all__ = ["APP_SCHEMES", "OriginCheck", "origin_allowed"]

# Pages that desktop apps (Electron, Tauri) and editors (VS Code's webviews) serve their own UI
# from; Ollama allows the same.
APP_SCHEMES = frozenset({"app", "file", "tauri", "vscode-webview"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_allowed(origin: str, host: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether a request with this `Origin` may write: see the module's docstring."""
    origin = origin.strip()
    listed = {entry.rstrip("/").lower() for entry in allowed}
    if "*" in listed or origin.rstrip("/").lower() in listed:
        return True
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
        name = parts.hostname or ""
    except ValueError:  # an unbalanced IPv6 bracket and the like
        return False
    scheme = parts.scheme.lower()
    if scheme in APP_SCHEMES:
        return True
    if scheme not in ("http", "https"):
        return False
    if host is not None and netloc == host.strip().lower():
        return True  # the server's own page
    return is_loopback_host(name)


class OriginCheck:
    """Refuses, before any route runs, a request other than GET, HEAD and OPTIONS whose
    `Origin` is not allowed (`origin_allowed`)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in _SAFE_METHODS:
            origin = host = None
            for name, value in scope.get("headers", ()):
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"host":
                    host = value.decode("latin-1")
            if origin is not None and not origin_allowed(origin, host, self.allowed):
                error = PermissionDeniedError(
                    f"Origin {origin!r} is not allowed: a web page from another site may not "
                    "send requests to this server. To allow it, start the server with "
                    "--cors-origin.",
                    code="origin_not_allowed",
                )
                await refusal(error, scope)(scope, receive, send)
                return
        await self.app(scope, receive, send)
