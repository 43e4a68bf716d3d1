"""The Origin rule for writes (server/http/origins.py) and finding a lone surrogate's field
(server/http/surrogates.py): pure functions, no server."""

from __future__ import annotations

import json

import pytest

from hearth.server.http.origins import origin_allowed
from hearth.server.http.surrogates import lone_surrogate_path

HOST = "127.0.0.1:8642"


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:8642",  # the server's own page
        "http://localhost:3000",
        "https://localhost",
        "http://app.localhost:1234",
        "http://[::1]:9000",
        "http://127.0.0.2",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://0abc",
    ],
)
def test_own_loopback_and_app_origins_may_write(origin: str) -> None:
    assert origin_allowed(origin, HOST)


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "chrome-extension://abcdef",
        "http://[::1",  # malformed
        "",
    ],
)
def test_foreign_origins_may_not(origin: str) -> None:
    assert not origin_allowed(origin, HOST)


def test_the_own_origin_is_the_host_header_whatever_the_name() -> None:
    assert origin_allowed("http://hearth.lan:8642", "hearth.lan:8642")
    assert not origin_allowed("http://hearth.lan:9999", "hearth.lan:8642")


def test_cors_origins_are_allowed_and_star_allows_all() -> None:
    assert origin_allowed("https://chat.example", HOST, ["https://chat.example/"])
    assert origin_allowed("null", HOST, ["*"])
    assert not origin_allowed("https://other.example", HOST, ["https://chat.example"])


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ('{"a": "ok"}', None),
        ('{"a": "\\ud83d\\ude00"}', None),  # a pair is one character
        ('{"a": "x\\ud800"}', ("a", False)),
        ('{"a": [1, {"b": "\\udc00"}]}', ("a[1].b", False)),
        ('{"m": {"\\ud800k": 1}}', ("m", True)),
        ('"\\ud800"', (None, False)),
        ('{"a": "\\\\ud800"}', None),  # an escaped backslash, then text
    ],
)
def test_the_first_lone_surrogate_is_named_by_its_path(
    body: str, found: tuple[str | None, bool] | None
) -> None:
    assert lone_surrogate_path(json.loads(body)) == found


def test_a_deep_body_is_walked_without_recursion() -> None:
    deep: object = "\ud800"
    for _ in range(100_000):
        deep = [deep]
    path = lone_surrogate_path(deep)
    assert path is not None and path[0] is not None and path[0].count("[0]") == 100_000
