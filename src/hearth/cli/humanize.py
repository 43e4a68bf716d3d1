"""Numbers and times as the client commands print them."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["parameters", "relative_time", "size"]


def size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def parameters(count: int | None) -> str:
    """134515008 -> 134.5M, as model cards count them."""
    if count is None:
        return "—"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def _span(seconds: float) -> str:
    for unit, scale in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= scale:
            amount = int(seconds // scale)
            return f"{amount} {unit}{'s' if amount != 1 else ''}"
    amount = int(seconds)
    return f"{amount} second{'s' if amount != 1 else ''}"


def relative_time(moment: datetime, now: datetime | None = None) -> str:
    """'3 days ago', 'in 4 minutes', 'just now'."""
    now = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = (moment - now).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"
