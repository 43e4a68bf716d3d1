"""What the client commands share: where the server is, its key, and what it has loaded.

Light on purpose (httpx, click): `hearth ps` and `hearth rm` import nothing of the server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import httpx

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ServerError",
    "auth_headers",
    "base_url",
    "loaded_models",
    "server_options",
]

# hearth.settings' defaults; importing it would load pydantic in every client command.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642
_TIMEOUT = httpx.Timeout(10.0, connect=3.0)

F = TypeVar("F", bound=Callable[..., Any])


class ServerError(Exception):
    """A server answered, but not usefully (a wrong key, not Hearth); one line for the user."""


def base_url(host: str, port: int) -> str:
    # A wildcard bind address is not one to connect to.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def auth_headers() -> dict[str, str]:
    keys = [k.strip() for k in os.environ.get("HEARTH_API_KEY", "").split(",") if k.strip()]
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def server_options(func: F) -> F:
    """--host and --port, from HEARTH_HOST and HEARTH_PORT, as `hearth serve` reads them."""
    func = click.option(
        "--port",
        envvar="HEARTH_PORT",
        type=click.IntRange(1, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        help="Server port. [env: HEARTH_PORT]",
    )(func)
    return click.option(
        "--host",
        envvar="HEARTH_HOST",
        default=DEFAULT_HOST,
        show_default=True,
        help="Server address. [env: HEARTH_HOST]",
    )(func)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _from_health(health: dict[str, Any]) -> list[dict[str, Any]]:
    """/api/ps's shape from /health, for a server that predates /api/ps: its one model."""
    name = health.get("model")
    if not isinstance(name, str):
        return []
    return [
        {
            "name": name,
            "model": name,
            "size": None,
            "size_vram": None,
            "expires_at": None,
            "slots_in_use": health.get("slots_in_use"),
            "slots_total": health.get("slots_total"),
            "context_length": health.get("n_ctx_per_slot"),
        }
    ]


def loaded_models(host: str, port: int) -> list[dict[str, Any]] | None:
    """The models the server at host:port has loaded (GET /api/ps), or None if none answers.

    Raises ServerError when something answers but not as Hearth, or refuses the key.
    """
    url = base_url(host, port)
    with httpx.Client(base_url=url, headers=auth_headers(), timeout=_TIMEOUT) as client:
        try:
            response = client.get("/api/ps")
            if response.status_code == 404:
                response = client.get("/health")
                body = _json_object(response) if response.status_code == 200 else None
                if body is None or not isinstance(body.get("model"), str):
                    raise ServerError(
                        f"{url} answers, but not as a Hearth server (GET /health: "
                        f"HTTP {response.status_code})"
                    )
                return _from_health(body)
        except httpx.TransportError:
            return None
    if response.status_code == 401:
        hint = "is HEARTH_API_KEY right?" if auth_headers() else "set HEARTH_API_KEY"
        raise ServerError(f"the Hearth server at {url} refused the API key (HTTP 401): {hint}")
    body = _json_object(response) if response.status_code == 200 else None
    models = body.get("models") if body is not None else None
    if not isinstance(models, list):
        raise ServerError(
            f"{url} answers, but not as a Hearth server (GET /api/ps: HTTP {response.status_code})"
        )
    return [m for m in models if isinstance(m, dict)]
