"""Bearer-token auth for /v1 routes, on when at least one API key is configured."""

from __future__ import annotations

import hmac

from fastapi import Request

from hearth.errors import AuthenticationError

__all__ = ["require_api_key"]


async def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.hearth.settings.api_key
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "You didn't provide an API key. Provide it as a Bearer token in the Authorization "
            "header (Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
        )
    token = token.strip()
    # Compare against every key, in constant time, so timing reveals nothing.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise AuthenticationError("Incorrect API key provided.")
