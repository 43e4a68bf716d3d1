"""Integers between bounds, as a grammar: JSON Schema's `minimum`, `maximum`,
`exclusiveMinimum` and `exclusiveMaximum` on an `integer`.

llama-cpp-python 0.3.36's schema converter enforces no numeric bounds (its code leaves a TODO),
and agents' tools use them (Claude Code's Read tool: `offset` from 0, `limit` above 0). An
integer range is a finite set of digit patterns: [17, 342] is `1[7-9]`, `[2-9][0-9]`,
`[1-2][0-9][0-9]`, `3[0-3][0-9]`, `34[0-2]`. A range open at the top adds every longer number
(`[1-9][0-9]{3,}` past 999). Numbers are written as JSON writes them: no leading zeros, `-0`
never.

`Pattern` is one alternative, a list of character classes each repeated a number of times;
`gbnf` writes the alternatives for llama.cpp, `regex` the same for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["IntegerBounds", "Pattern", "gbnf", "integer_patterns", "regex"]


@dataclass(frozen=True, slots=True)
class _Digits:
    low: str  # a character class: digits low..high
    high: str
    min_count: int = 1
    max_count: int | None = 1  # None: unbounded


Pattern = tuple[str, tuple[_Digits, ...]]  # a sign ("" or "-"), then digit classes


@dataclass(frozen=True, slots=True)
class IntegerBounds:
    """Inclusive bounds; None: unbounded on that side."""

    minimum: int | None = None
    maximum: int | None = None

    @classmethod
    def from_schema(cls, schema: dict[str, object]) -> IntegerBounds:
        """The bounds of an integer schema. A fractional bound rounds inward; draft 4's boolean
        exclusiveMinimum/Maximum makes `minimum`/`maximum` exclusive."""
        minimum, maximum = _number(schema.get("minimum")), _number(schema.get("maximum"))
        exclusive_min, exclusive_max = (
            schema.get("exclusiveMinimum"),
            schema.get("exclusiveMaximum"),
        )
        lows, highs = [], []
        if minimum is not None:
            lows.append(math.ceil(minimum) + (exclusive_min is True and minimum % 1 == 0))
        if (bound := _number(exclusive_min)) is not None:
            lows.append(math.floor(bound) + 1)
        if maximum is not None:
            highs.append(math.floor(maximum) - (exclusive_max is True and maximum % 1 == 0))
        if (bound := _number(exclusive_max)) is not None:
            highs.append(math.ceil(bound) - 1)
        return cls(max(lows) if lows else None, min(highs) if highs else None)

    @property
    def empty(self) -> bool:
        return self.minimum is not None and self.maximum is not None and self.minimum > self.maximum


def _number(value: object) -> float | None:
    """A JSON number (not a boolean, not infinite), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def integer_patterns(bounds: IntegerBounds) -> list[Pattern]:
    """The digit patterns of every integer within `bounds` (none when the range is empty)."""
    if bounds.empty:
        return []
    low, high = bounds.minimum, bounds.maximum
    patterns: list[Pattern] = []
    if high is None or high >= 0:  # zero and the positive part
        start = 0 if low is None else max(low, 0)
        patterns += [("", p) for p in _magnitudes(start, high)]
    if low is None or low < 0:  # the negative part, by magnitude: -1 is 1
        start = 1 if high is None or high >= 0 else -high
        patterns += [("-", p) for p in _magnitudes(start, None if low is None else -low)]
    return patterns


def _magnitudes(low: int, high: int | None) -> list[tuple[_Digits, ...]]:
    """Digit patterns of the numbers low..high (high None: no end), low >= 0."""
    if high is not None and low > high:
        return []
    top = high if high is not None else 10 ** len(str(low)) - 1
    patterns: list[tuple[_Digits, ...]] = []
    for length in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(top, 10**length - 1)
        if first <= last:
            patterns += _same_length(str(first), str(last))
    if high is None:  # every number longer than low
        patterns.append((_Digits("1", "9"), _Digits("0", "9", len(str(low)), None)))
    return patterns


def _same_length(a: str, b: str) -> list[tuple[_Digits, ...]]:
    """Patterns of the numbers a..b, both written with the same number of digits."""
    if len(a) == 1:
        return [(_Digits(a, b),)]
    if a[0] == b[0]:
        return [(_Digits(a[0], a[0]), *rest) for rest in _same_length(a[1:], b[1:])]
    tail = len(a) - 1
    patterns: list[tuple[_Digits, ...]] = []
    first, last = int(a[0]), int(b[0])
    if a[1:] != "0" * tail:  # a's own first digit, from a's tail up
        patterns += [(_Digits(a[0], a[0]), *rest) for rest in _same_length(a[1:], "9" * tail)]
        first += 1
    if b[1:] != "9" * tail:
        last -= 1
    if first <= last:  # whole blocks: any tail
        patterns.append((_Digits(str(first), str(last)), _Digits("0", "9", tail, tail)))
    if b[1:] != "9" * tail:  # b's own first digit, up to b's tail
        patterns += [(_Digits(b[0], b[0]), *rest) for rest in _same_length("0" * tail, b[1:])]
    return patterns


def _count(digits: _Digits) -> str:
    if digits.min_count == digits.max_count == 1:
        return ""
    if digits.max_count is None:
        return f"{{{digits.min_count},}}"
    if digits.min_count == digits.max_count:
        return f"{{{digits.min_count}}}"
    return f"{{{digits.min_count},{digits.max_count}}}"


def _class(digits: _Digits) -> str:
    return digits.low if digits.low == digits.high else f"[{digits.low}-{digits.high}]"


def gbnf(patterns: list[Pattern]) -> str:
    """A GBNF alternation of the patterns: the body of a rule."""
    alternatives = []
    for sign, digits in patterns:
        parts = ([f'"{sign}"'] if sign else []) + [
            (f'"{d.low}"' if d.low == d.high else f"[{d.low}-{d.high}]") + _count(d) for d in digits
        ]
        alternatives.append(" ".join(parts))
    return "(" + " | ".join(alternatives) + ")"


def regex(patterns: list[Pattern]) -> str:
    """The same alternation as a Python regular expression (for tests)."""
    return "|".join(
        sign + "".join(_class(d) + _count(d) for d in digits) for sign, digits in patterns
    )
