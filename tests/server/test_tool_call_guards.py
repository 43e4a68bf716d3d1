"""Tool calls that never break a client, on every API: no call repeated within a turn, and no
call whose arguments were cut short by the token limit. The case is the one a new user met:
the bundled model, tool_choice "required", max_tokens 120, sampled (it loops on one call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer

pytestmark = pytest.mark.server

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
}
QUESTION = "What is the weather in Paris, London and Rome?"
SEEDS = range(4)


def assert_whole_and_distinct(calls: list[tuple[str, str]]) -> None:
    assert calls, "tool_choice required gave no call"
    parsed = [
        (name, json.dumps(json.loads(arguments), sort_keys=True)) for name, arguments in calls
    ]
    assert len(set(parsed)) == len(parsed), f"a call was repeated: {calls}"


@pytest.fixture()
def claude(server: HearthServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    yield client
    client.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_chat_completions(client: openai.OpenAI, seed: int) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": PARAMETERS},
            }
        ],
        tool_choice="required",
        max_tokens=120,
        temperature=1.0,
        seed=seed,
    )
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    assert_whole_and_distinct([(c.function.name, c.function.arguments) for c in calls])
    assert choice.finish_reason in ("tool_calls", "length")


@pytest.mark.parametrize("seed", SEEDS)
def test_responses(client: openai.OpenAI, seed: int) -> None:
    response = client.responses.create(
        model=MODEL,
        input=QUESTION,
        tools=[{"type": "function", "name": "get_weather", "parameters": PARAMETERS}],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=120,
        temperature=1.0,
        store=False,
        extra_body={"seed": seed},
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert_whole_and_distinct([(c.name, c.arguments) for c in calls])


CITIES = ["Paris, London and Rome", "Tokyo and Oslo", "Lima", "Cairo, Delhi and Perth"]


@pytest.mark.parametrize("cities", CITIES)
def test_anthropic_messages(claude: anthropic.Anthropic, cities: str) -> None:
    # The Messages API has no seed: greedy decoding over several questions instead.
    message = claude.messages.create(
        model=MODEL,
        max_tokens=120,
        messages=[{"role": "user", "content": f"What is the weather in {cities}?"}],
        tools=[{"name": "get_weather", "input_schema": PARAMETERS}],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    uses = [block for block in message.content if block.type == "tool_use"]
    assert_whole_and_distinct([(u.name, json.dumps(u.input)) for u in uses])
    assert message.stop_reason in ("tool_use", "max_tokens")


@pytest.mark.parametrize("seed", SEEDS)
def test_ollama_chat(server: HearthServer, seed: int) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
        ],
        "tool_choice": "required",
        "stream": False,
        "options": {"num_predict": 120, "temperature": 1.0, "seed": seed},
    }
    reply = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    calls = reply.json()["message"].get("tool_calls") or []
    assert_whole_and_distinct(
        [(c["function"]["name"], json.dumps(c["function"]["arguments"])) for c in calls]
    )
