from __future__ import annotations

import pytest

from hearth.engine.text import StopMatcher, Utf8Stream


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    out = []
    for piece in pieces:
        out.append(matcher.push(piece))
        if matcher.stopped:
            break
    else:
        out.append(matcher.flush())
    return "".join(out)


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "stopped"),
    [
        (["Hello", " wor", "ld"], ("world",), "Hello ", True),
        (["ab", "cd", "ef"], ("cde",), "ab", True),
        (["a", "b", "c"], ("x",), "abc", False),
        (["abc"], (), "abc", False),
        (["Hello\n\nUser:", " hi"], ("\n\n", "User:"), "Hello", True),
        (["ca", "t"], ("cab",), "cat", False),
        (["xxSTO", "P"], ("STOP", "TOP"), "xx", True),
    ],
)
def test_stop_matcher(
    pieces: list[str], stops: tuple[str, ...], expected: str, stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    assert feed(matcher, pieces) == expected
    assert matcher.stopped is stopped


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.push("abcE") == "abc"
    assert matcher.push("x") == "Ex"
    assert matcher.push("EN") == ""
    assert matcher.push("D") == ""
    assert matcher.stopped


def test_utf8_stream_joins_split_characters() -> None:
    stream = Utf8Stream()
    data = "é✓".encode()
    assert stream.push(data[:1]) == ""
    assert stream.push(data[1:3]) == "é"
    assert stream.push(data[3:]) == "✓"
    assert stream.flush() == ""


def test_utf8_stream_replaces_invalid_bytes_at_the_end() -> None:
    stream = Utf8Stream()
    assert stream.push(b"a\xe2\x9c") == "a"
    assert stream.flush() == "\ufffd"
