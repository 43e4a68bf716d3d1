"""`keep_alive` as Ollama takes it: how long a model stays loaded after its last request.

A number is seconds; a string is a Go-style duration ("10m", "30s", "1h30m", "500ms") or a bare
number of seconds ("300"). Zero unloads right after the request; any negative value keeps the
model loaded for good, returned here as `math.inf`, and so does one longer than Ollama's longest
(a Go duration's, about 292 years): no clock could show when it ends.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = [
    "FOREVER_AFTER_S",
    "KeepAlive",
    "KeepAliveInput",
    "format_keep_alive",
    "parse_keep_alive",
]

KeepAliveInput = str | int | float

# The longest Go time.Duration, which Ollama parses keep_alive into; longer means forever here.
FOREVER_AFTER_S = (2**63 - 1) / 1e9
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: KeepAliveInput) -> float:
    """Seconds to keep a model loaded after its last request; `math.inf` means forever."""
    if isinstance(value, bool):  # a JSON true is an int to Python; never a duration
        raise ValueError("keep_alive must be a number of seconds or a duration like '10m'")
    if isinstance(value, int) and abs(value) > FOREVER_AFTER_S:
        return math.inf  # JSON's integers have no bound; float() would overflow
    seconds = float(value) if isinstance(value, int | float) else _parse_duration(value)
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a number of seconds or a duration like '10m'")
    return math.inf if seconds < 0 or seconds > FOREVER_AFTER_S else seconds


def _parse_duration(text: str) -> float:
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # a bare number: seconds
    except ValueError:
        pass
    position, total = 0, 0.0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None:
            raise ValueError(
                f"invalid keep_alive {text!r}: give seconds, or a duration like '30s', '10m', "
                "'1h30m'; 0 unloads after the request, -1 keeps the model loaded"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError("keep_alive must not be empty")
    return sign * total


def _checked(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("keep_alive must be a number of seconds or a duration like '10m'")
    parse_keep_alive(value)
    return value


# A wire or file field: validated as it is parsed, kept in the sender's form.
KeepAlive = Annotated[KeepAliveInput, BeforeValidator(_checked)]


def format_keep_alive(seconds: float) -> str:
    """A short human form for logs and docs: 'forever', '0s', '5m', '90s'."""
    if math.isinf(seconds):
        return "forever"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
