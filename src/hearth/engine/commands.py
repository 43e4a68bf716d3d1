"""Commands that the event loop sends to an engine thread's inbox, besides each engine's own
`_Add`: the generation engine and the embedder share them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hearth.engine.types import MediaInput
from hearth.errors import HearthError

__all__ = ["Abort", "AbortAll", "MeasureMedia", "Stop"]


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


@dataclass(frozen=True, slots=True)
class MeasureMedia:
    """How many positions each image takes (or why llama.cpp refused it): the projector is the
    engine thread's, so it answers between two steps, through `reply`."""

    media: tuple[MediaInput, ...]
    reply: Callable[[list[int | str]], None]
