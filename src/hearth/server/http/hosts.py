"""DNS-rebinding protection: a server bound to loopback answers only requests addressed to a
loopback name or address, or to one of --allowed-hosts (403 otherwise, in the route's shape).

A web page at evil.example can make its name resolve to 127.0.0.1 after the page has loaded
(DNS rebinding); the browser then sends the page's requests to the local server as same-origin
requests, with `Host: evil.example`. CORS cannot help, since the browser sees no cross-origin
request. Ollama had this hole (CVE-2024-28224). A server bound to another address was exposed on
purpose, so it checks nothing here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.errors import PermissionDeniedError
from hearth.server.http.errors import refusal

__all__ = ["HostCheck", "host_allowed", "is_loopback_host", "split_host"]


def split_host(header: str) -> str:
    """The name or address in a `Host` header, lower-cased, without its port or IPv6 brackets:
    'LocalHost:8642' -> 'localhost', '[::1]:8642' -> '::1'."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name
    return host


def is_loopback_host(host: str) -> bool:
    """Whether a name or address (no port) is loopback: localhost (and its subdomains, which
    browsers resolve to loopback themselves, RFC 6761), 127.0.0.0/8 or ::1."""
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether a loopback server answers a request with this `Host` header: a loopback name or
    address (any port), or one listed in `allowed` (by name, any port; '*' allows any). A request
    with no `Host` (HTTP/1.0) comes from no browser and is allowed."""
    if header is None:
        return True
    host = split_host(header)
    if is_loopback_host(host):
        return True
    return any(entry == "*" or split_host(entry) == host for entry in allowed)


class HostCheck:
    """Refuses, before anything else runs, an HTTP request whose `Host` is not allowed
    (`host_allowed`). Install it only when the server is bound to loopback."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = None
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    header = value.decode("latin-1")
                    break
            if not host_allowed(header, self.allowed):
                error = PermissionDeniedError(
                    f"Host {header!r} is not allowed: this server is bound to a loopback address "
                    "and answers only requests to localhost, 127.0.0.1 or [::1]. To serve this "
                    "name too, start it with --allowed-hosts.",
                    code="host_not_allowed",
                )
                await refusal(error, scope)(scope, receive, send)
                return
        await self.app(scope, receive, send)
