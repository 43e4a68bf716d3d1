"""API-key auth for /v1, /api and the extension routes, on when at least one key is configured.

The key comes as a Bearer token (`Authorization: Bearer KEY`, OpenAI's clients and Ollama's) or
in `x-api-key` (Anthropic's clients), on every route alike. The key that matched is remembered
on the request as its fingerprint (`key_owner`): stored responses belong to it.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from hearth.errors import AuthenticationError

__all__ = ["key_fingerprint", "key_owner", "require_api_key"]


def key_fingerprint(key: str) -> str:
    """What the response store keeps of a key: its SHA-256, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_owner(request: Request) -> str | None:
    """The fingerprint of the key this request was let in with; None when no keys are set."""
    owner: str | None = getattr(request.state, "key_owner", None)
    return owner


def _presented_keys(request: Request) -> list[str]:
    presented = []
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        presented.append(token.strip())
    # Anthropic's SDK sends x-api-key (and Authorization only when given an auth token; a client
    # may send both, each from its own setting: either one may hold the key).
    key = request.headers.get("x-api-key", "").strip()
    if key:
        presented.append(key)
    return presented


async def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.hearth.settings.api_key
    if not keys:
        return
    presented = _presented_keys(request)
    if not presented:
        raise AuthenticationError(
            "You didn't provide an API key. Provide it as a Bearer token in the Authorization "
            "header (Authorization: Bearer YOUR_KEY) or in the x-api-key header "
            "(x-api-key: YOUR_KEY).",
            code="missing_api_key",
        )
    # Compare every presented key against every key, in constant time, so timing reveals nothing.
    matched = [
        key
        for token in presented
        for key in keys
        if hmac.compare_digest(token.encode(), key.encode())
    ]
    if not matched:
        raise AuthenticationError("Incorrect API key provided.")
    request.state.key_owner = key_fingerprint(matched[0])
