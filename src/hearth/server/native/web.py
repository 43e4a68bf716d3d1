"""The web page at `/`: chat, models and pulls for a person, from files inside the package
(src/hearth/web: ES modules served as they are, vendored libraries, no build step, no network).

Every file is read once when the router is built; only those files are served, so no request
path reaches the filesystem. Each answer carries a Content-Security-Policy that allows scripts,
styles, images and requests from this origin only, and no inline script or style. The page calls
the API routes as any client does (with the API key the person gives it when keys are set).
`hearth serve --no-ui` leaves this router out.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter
from fastapi.responses import Response

from hearth.errors import NotFoundError

__all__ = ["CONTENT_SECURITY_POLICY", "web_router"]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load: an upgraded Hearth never runs with a stale module.
    "Cache-Control": "no-cache",
}


def _content_type(name: str) -> str:
    for suffix, content_type in _CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return "text/plain; charset=utf-8"  # licenses, VERSIONS


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_dir():
            found.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            found[prefix + entry.name] = entry.read_bytes()
    return found


def _page_response(body: bytes, name: str) -> Response:
    return Response(body, media_type=_content_type(name), headers=_HEADERS)


def web_router() -> APIRouter:
    """`/` (the page) and `/web/{path}` (its modules, styles and the vendored libraries)."""
    assets = _walk(files("hearth") / "web")
    index = assets["index.html"]
    router = APIRouter(include_in_schema=False)

    # HEAD too: the check clients make before their first request (Claude Code; Ollama's
    # clients know it from Ollama's "Ollama is running"). With --no-ui, / is a 404 either way.
    @router.api_route("/", methods=["GET", "HEAD"])
    async def page() -> Response:
        return _page_response(index, "index.html")

    @router.get("/web/{path:path}")
    async def asset(path: str) -> Response:
        body = assets.get(path)
        if body is None:
            raise NotFoundError(f"The page has no file `{path}`.")
        return _page_response(body, path)

    return router
