"""Integer bounds as digit patterns (engine/integer_grammar.py): every integer in a window is
matched exactly when it lies within the bounds, as JSON writes it."""

from __future__ import annotations

import random
import re

import pytest

from hearth.engine.integer_grammar import IntegerBounds, gbnf, integer_patterns, regex


def _matches(bounds: IntegerBounds, window: range) -> None:
    pattern = re.compile(f"(?:{regex(integer_patterns(bounds))})")
    for number in window:
        inside = (bounds.minimum is None or number >= bounds.minimum) and (
            bounds.maximum is None or number <= bounds.maximum
        )
        assert bool(pattern.fullmatch(str(number))) == inside, (bounds, number)
    # Never a leading zero, never -0.
    for text in ("00", "01", "-0", "-01", "007"):
        assert not pattern.fullmatch(text), (bounds, text)


@pytest.mark.parametrize(
    ("minimum", "maximum"),
    [(0, None), (1, None), (None, 0), (None, -1), (17, 342), (0, 9), (0, 10), (-5, 5),
     (-342, -17), (-1000, 1000), (100, 199), (99, 100), (120, 129), (0, 0), (-7, -7),
     (10, 99), (1, 9007199254740991), (None, 55), (-55, None), (990, 1010), (None, None)],
)  # fmt: skip
def test_a_range_matches_exactly_its_integers(minimum: int | None, maximum: int | None) -> None:
    _matches(IntegerBounds(minimum, maximum), range(-2100, 2100))


def test_random_ranges_match_exactly_their_integers() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a, b = sorted(rng.randint(-3000, 3000) for _ in range(2))
        low = None if rng.random() < 0.15 else a
        high = None if rng.random() < 0.15 else b
        _matches(IntegerBounds(low, high), range(-3200, 3200))


def test_bounds_from_each_keyword() -> None:
    read = IntegerBounds.from_schema
    assert read({"type": "integer", "minimum": 0}) == IntegerBounds(0, None)
    assert read({"type": "integer", "exclusiveMinimum": 0}) == IntegerBounds(1, None)
    assert read({"type": "integer", "maximum": 10}) == IntegerBounds(None, 10)
    assert read({"type": "integer", "exclusiveMaximum": 10}) == IntegerBounds(None, 9)
    assert read({"minimum": 1.5, "maximum": 3.5}) == IntegerBounds(2, 3)  # inward
    assert read({"exclusiveMinimum": 1.5}) == IntegerBounds(2, None)
    # draft 4: booleans make minimum and maximum exclusive
    assert read({"minimum": 0, "exclusiveMinimum": True}) == IntegerBounds(1, None)
    assert read({"maximum": 9, "exclusiveMaximum": True}) == IntegerBounds(None, 8)
    assert read({"minimum": 5, "maximum": 4}).empty
    assert integer_patterns(IntegerBounds(5, 4)) == []


def test_the_gbnf_form() -> None:
    assert gbnf(integer_patterns(IntegerBounds(17, 342))) == (
        '("1" [7-9] | [2-9] [0-9] | [1-2] [0-9]{2} | "3" [0-3] [0-9] | "3" "4" [0-2])'
    )
    assert gbnf(integer_patterns(IntegerBounds(0, None))) == "([0-9] | [1-9] [0-9]{1,})"
