"""Commands that the event loop sends to an engine thread's inbox, besides each engine's own
`_Add`: the generation engine and the embedder share them."""

from __future__ import annotations

from dataclasses import dataclass

from hearth.errors import HearthError

__all__ = ["Abort", "AbortAll", "Stop"]


@dataclass(frozen=True, slots=True)
class Abort:
    """End one request: its client left."""

    request_id: str


@dataclass(frozen=True, slots=True)
class AbortAll:
    """End every request with `error`: the server is stopping or the model failed."""

    error: HearthError


@dataclass(frozen=True, slots=True)
class Stop:
    """Leave the thread's loop."""
