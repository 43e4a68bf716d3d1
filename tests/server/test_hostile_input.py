"""Hostile input (issue 22): what a hostile client or a foreign web page sends gets a 4xx in the
route's own shape, before any template, generation or write; never a 500 or a traceback.

One server of its own: these tests create models and write blobs into its store."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

LONE_HIGH = "\\ud800"  # as a JSON escape: Python's json.dumps would write a str's lone half so
LONE_LOW = "\\udfff"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    running = start_server(tmp_path_factory.mktemp("hostile"), "--parallel", "2")
    try:
        yield running
    finally:
        log = running.log()
        running.stop()
        assert "Traceback" not in log, log


def post_raw(
    server: HearthServer, path: str, body: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST `body` as written: the JSON escapes of lone surrogates stay as they are."""
    return httpx.post(
        f"{server.base_url}{path}",
        content=body.encode(),
        headers={"content-type": "application/json", **(headers or {})},
        timeout=60,
    )


def openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def with_lone_surrogate(value: dict[str, Any], marker: str = "@@") -> str:
    """`value` as JSON, its `marker` replaced by a lone surrogate's escape."""
    return json.dumps(value).replace(marker, LONE_HIGH)


# -- 1. lone surrogates -----------------------------------------------------------------------

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/responses", {"model": MODEL, "input": "a@@b"}, "input"),
        ("/v1/responses", {"model": MODEL, "input": "hi", "metadata": {"k": "v@@"}}, "metadata.k"),
        ("/v1/responses", {"model": MODEL, "input": "hi", "instructions": "@@"}, "instructions"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x@@"}]},
            "messages[0].content",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stop": ["@@"]}, "stop[0]"),
        ("/v1/completions", {"model": MODEL, "prompt": "@@"}, "prompt"),
        ("/v1/embeddings", {"model": MODEL, "input": ["ok", "@@"]}, "input[1]"),
        ("/tokenize", {"model": MODEL, "content": "@@"}, "content"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(
    hostile: HearthServer, path: str, body: dict[str, Any], param: str
) -> None:
    response = post_raw(hostile, path, with_lone_surrogate(body))
    assert response.status_code == 400, response.text
    error = openai_error(response)
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["type"] == "invalid_request_error"


def test_a_lone_surrogate_in_a_key_names_the_object(hostile: HearthServer) -> None:
    body = json.dumps({"model": MODEL, "input": "hi", "metadata": {"k@@": "v"}})
    response = post_raw(hostile, "/v1/responses", body.replace("@@", LONE_LOW))
    assert response.status_code == 400
    assert openai_error(response)["param"] == "metadata"


def test_a_lone_surrogate_on_messages_and_count_tokens_is_anthropic_shaped(
    hostile: HearthServer,
) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "@@"}]}
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = post_raw(hostile, path, with_lone_surrogate(body))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "messages[0].content" in error["message"]


def test_a_lone_surrogate_on_ollama_routes_is_ollama_shaped(hostile: HearthServer) -> None:
    for path, body in [
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "@@"}]}),
        ("/api/generate", {"model": MODEL, "prompt": "@@"}),
        ("/api/embed", {"model": MODEL, "input": "@@"}),
    ]:
        response = post_raw(hostile, path, with_lone_surrogate(body))
        assert response.status_code == 400, path
        assert set(response.json()) == {"error"}


def test_create_with_a_lone_surrogate_creates_nothing(hostile: HearthServer) -> None:
    body = {"model": "surrogate-system", "from": MODEL, "system": "@@"}
    response = post_raw(hostile, "/api/create", with_lone_surrogate(body))
    assert response.status_code == 400
    assert "'system'" in response.json()["error"]
    tags = httpx.get(f"{hostile.base_url}/api/tags").json()["models"]
    assert "surrogate-system" not in {tag["name"].split(":")[0] for tag in tags}


def test_a_stored_response_with_a_lone_surrogate_is_never_stored(hostile: HearthServer) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, "metadata": {"k": "@@"}}
    response = post_raw(hostile, "/v1/responses", with_lone_surrogate(body))
    assert response.status_code == 400
    assert hostile.health()["slots_in_use"] == 0  # refused before generation


def test_a_surrogate_pair_is_text(hostile: HearthServer) -> None:
    # An emoji sent as JSON escapes of its UTF-16 pair (Python's json.dumps writes it so).
    body = json.dumps({"model": MODEL, "content": "\U0001f600"})
    assert "\\ud83d\\ude00" in body
    response = post_raw(hostile, "/tokenize", body)
    assert response.status_code == 200
    assert response.json()["tokens"]


def test_an_escaped_backslash_before_u_is_no_surrogate(hostile: HearthServer) -> None:
    response = post_raw(hostile, "/tokenize", json.dumps({"model": MODEL, "content": "\\ud800"}))
    assert response.status_code == 200


# -- 4. cross-site writes ---------------------------------------------------------------------

EVIL = "https://evil.example"


def test_a_foreign_origin_cannot_store_a_blob(hostile: HearthServer) -> None:
    body = b"x" * (1 << 20)
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    url = f"{hostile.base_url}/api/blobs/{digest}"
    response = httpx.post(
        url, content=body, headers={"Origin": EVIL, "Content-Type": "text/plain"}, timeout=30
    )
    assert response.status_code == 403
    assert "evil.example" in response.json()["error"]
    assert httpx.head(url).status_code == 404  # nothing was kept


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost.evil.example", "ftp://x"])
def test_a_foreign_origin_is_refused_on_every_write(hostile: HearthServer, origin: str) -> None:
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("DELETE", "/v1/responses/resp_x"),
        ("POST", "/api/create"),
        ("DELETE", "/api/delete"),
        ("POST", "/admin/models/unload"),
    ]:
        response = httpx.request(
            method,
            f"{hostile.base_url}{path}",
            json={"model": MODEL, "messages": CHAT},
            headers={"Origin": origin},
        )
        assert response.status_code == 403, (method, path, response.text)
        if not path.startswith("/api/"):
            error = openai_error(response)
            assert (error["type"], error["code"]) == ("permission_error", "origin_not_allowed")


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "http://[::1]:8080",
        "app://hearth",
        "file://",
        "tauri://localhost",
        "vscode-webview://1234abcd",
    ],
)
def test_local_apps_and_editors_may_write(hostile: HearthServer, origin: str) -> None:
    response = httpx.post(
        f"{hostile.base_url}/tokenize",
        json={"model": MODEL, "content": "hi"},
        headers={"Origin": origin},
    )
    assert response.status_code == 200, response.text


def test_the_servers_own_page_may_write_under_any_name(hostile: HearthServer) -> None:
    # A server reached by another name (--allowed-hosts, or bound to a LAN address) serves its
    # page there; that page's origin is the Host it was loaded from.
    response = httpx.post(
        f"{hostile.base_url}/tokenize",
        json={"model": MODEL, "content": "hi"},
        headers={"Origin": hostile.base_url},
    )
    assert response.status_code == 200


def test_reads_and_preflights_from_any_origin_pass(hostile: HearthServer) -> None:
    headers = {"Origin": EVIL}
    assert httpx.get(f"{hostile.base_url}/v1/models", headers=headers).status_code == 200
    preflight = httpx.options(
        f"{hostile.base_url}/v1/chat/completions",
        headers={**headers, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code != 403
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_may_write(tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_server(
        tmp_path_factory.mktemp("cors"), "--cors-origin", "https://chat.example"
    ) as server:
        url = f"{server.base_url}/tokenize"
        body = {"model": MODEL, "content": "hi"}
        allowed = httpx.post(url, json=body, headers={"Origin": "https://chat.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://chat.example"
        assert httpx.post(url, json=body, headers={"Origin": EVIL}).status_code == 403


# -- 7. names and parameters ------------------------------------------------------------------

LONG_NAME = "a:" * 99 + "a"  # 199 characters; each ':' is 3 bytes in its file name


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/create", {"model": LONG_NAME, "from": MODEL}, "model"),
        ("/api/create", {"model": "a" * 5000, "from": MODEL}, "model"),
        ("/api/copy", {"source": MODEL, "destination": LONG_NAME}, "destination"),
        ("/api/pull", {"model": "a" * 5000}, "model"),
        ("/api/pull", {"model": "x/" * 3000 + "y"}, "model"),
        ("/api/create", {"model": "stops", "from": MODEL, "parameters": {"stop": 5}}, None),
        ("/api/create", {"model": "stops", "from": MODEL, "parameters": {"stop": [1]}}, None),
    ],
)
def test_names_and_parameters_are_checked_at_the_edge(
    hostile: HearthServer, path: str, body: dict[str, Any], param: str | None
) -> None:
    response = httpx.post(f"{hostile.base_url}{path}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}  # Ollama's shape: no param to check
    assert ("parameters" if param is None else "name") in response.json()["error"]


def test_a_name_that_fits_is_created(hostile: HearthServer) -> None:
    name = "b" * 150
    response = httpx.post(
        f"{hostile.base_url}/api/create", json={"model": name, "from": MODEL, "stream": False}
    )
    assert response.status_code == 200, response.text
    httpx.request("DELETE", f"{hostile.base_url}/api/delete", json={"model": name})


# -- 9. an empty body -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/responses", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
)
def test_an_empty_body_says_so(hostile: HearthServer, path: str) -> None:
    response = httpx.post(f"{hostile.base_url}{path}")
    assert response.status_code == 400
    error = openai_error(response)
    assert (error["param"], error["code"]) == (None, "invalid_json")
    assert "None" not in error["message"]
    assert "no body" in error["message"]


# -- 2. schemas that explode ------------------------------------------------------------------

HUGE = 100_000_000


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (
            "/v1/responses",
            {
                "input": "hi",
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"type": "string", "minLength": HUGE},
                    }
                },
            },
            "text.format.schema.minLength",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": CHAT,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"properties": {"a": {"pattern": "^a{0,99999}$"}}},
                    },
                },
            },
            "response_format.json_schema.schema.properties.a.pattern",
        ),
        (
            "/v1/responses",  # the Responses API's tools are strict unless they say otherwise
            {
                "input": "hi",
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "parameters": {"properties": {"a": {"type": "array", "maxItems": HUGE}}},
                    }
                ],
            },
            "tools[0].parameters.properties.a.maxItems",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": CHAT,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "strict": True,
                            "parameters": {"properties": {"a": {"maxLength": HUGE}}},
                        },
                    }
                ],
            },
            "tools[0].function.parameters.properties.a.maxLength",
        ),
    ],
)
def test_a_repetition_bound_past_the_limit_is_a_400_naming_the_keyword(
    hostile: HearthServer, path: str, extra: dict[str, Any], param: str
) -> None:
    limit = "max_output_tokens" if path == "/v1/responses" else "max_tokens"
    body = {"model": MODEL, limit: 2, **extra}
    response = httpx.post(f"{hostile.base_url}{path}", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = openai_error(response)
    assert error["param"] == param


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_a_schema_nested_too_deep_is_a_400(hostile: HearthServer) -> None:
    fmt = {"type": "json_schema", "name": "x", "schema": nested_schema(200)}
    response = httpx.post(
        f"{hostile.base_url}/v1/responses",
        json={"model": MODEL, "input": "hi", "text": {"format": fmt}},
        timeout=30,
    )
    assert response.status_code == 400
    assert openai_error(response)["param"].startswith("text.format.schema.items.items")


def test_a_tool_that_is_not_strict_is_called_without_the_bound(hostile: HearthServer) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string", "minLength": HUGE}},
                "required": ["q"],
            },
        },
    }
    response = httpx.post(
        f"{hostile.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": CHAT,
            "max_tokens": 24,
            "tools": [tool],
            "tool_choice": "required",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("tool_calls", "length")
    assert "lookup is not strict: its grammar leaves out schema.properties.q.minLength" in (
        hostile.log()
    )


def test_count_tokens_counts_a_tool_with_a_huge_bound_quickly(hostile: HearthServer) -> None:
    tool = {"name": "f", "input_schema": {"properties": {"a": {"minLength": HUGE}}}}
    response = httpx.post(
        f"{hostile.base_url}/v1/messages/count_tokens",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["input_tokens"] > 0


# -- 3. big inputs stall nobody ---------------------------------------------------------------


def test_a_neighbour_finishes_while_a_huge_input_is_prepared(hostile: HearthServer) -> None:
    """Templating and tokenizing 15 MiB take seconds, on a worker thread: /health and a
    one-token chat both answer before the huge request does (its answer: the context is
    exceeded). Only the order is asserted; bench/hostile.py measures the times."""
    body = json.dumps({"model": MODEL, "input": "hello world " * 1_250_000}).encode()
    sent = threading.Event()
    finished: list[str] = []

    def upload() -> Iterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]
        sent.set()  # the whole body is on its way: the server's work starts

    def huge() -> None:
        response = httpx.post(
            f"{hostile.base_url}/v1/responses",
            content=upload(),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        finished.append(f"huge {response.status_code}")

    worker = threading.Thread(target=huge)
    worker.start()
    try:
        assert sent.wait(30)
        hostile.health()
        finished.append("health")
        chat = httpx.post(
            f"{hostile.base_url}/v1/chat/completions",
            json={"model": MODEL, "messages": CHAT, "max_tokens": 1},
            timeout=60,
        )
        assert chat.status_code == 200
        finished.append("chat")
    finally:
        worker.join()
    assert finished == ["health", "chat", "huge 400"]


# -- 6. leftovers -----------------------------------------------------------------------------


def test_the_server_deletes_what_a_killed_import_left(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log_dir = tmp_path_factory.mktemp("leftovers")
    staging = log_dir / "home" / "models" / ".partial"
    staging.mkdir(parents=True)
    # A process that dies (kill -9) while it writes a temporary copy, as `hearth pull
    # ./file.gguf --name x` does; the name it writes is the store's own.
    script = (
        "import os, signal\n"
        "from hearth.models.store import ModelStore\n"
        "from pathlib import Path\n"
        f"path = ModelStore(Path({str(log_dir / 'home')!r})).temp_path('.gguf')\n"
        "path.write_bytes(b'GGUF' + bytes(1 << 20))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -signal.SIGKILL
    (orphan,) = staging.glob("*.gguf")
    resumable = staging / f"{'e' * 64}.part"
    resumable.write_bytes(b"half a download")
    with start_server(log_dir) as server:
        assert not orphan.exists()
        assert resumable.exists()  # the next pull resumes it
        assert f"Deleted {orphan.name}" in server.log()
