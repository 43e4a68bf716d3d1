"""A preset is applied once, to the protocol-free conversation, so every API treats it alike:
its stop strings apply when the request sends none, and an explicit empty `stop` clears them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hearth.models.presets import Preset, PresetParams
from tests.unit.fake_app import fake_app

PIRATE = Preset(base="smollm2:135m", params=PresetParams(stop=["Arr"]))
REPLY = "Ahoy Arr matey"
HI = [{"role": "user", "content": "Hi"}]


def _chat(stop: list[str] | None) -> dict[str, Any]:
    return {"model": "pirate", "messages": HI} | ({} if stop is None else {"stop": stop})


def _completion(stop: list[str] | None) -> dict[str, Any]:
    return {"model": "pirate", "prompt": "Hi"} | ({} if stop is None else {"stop": stop})


def _response(stop: list[str] | None) -> dict[str, Any]:
    return {"model": "pirate", "input": "Hi"} | ({} if stop is None else {"stop": stop})


def _message(stop: list[str] | None) -> dict[str, Any]:
    body = {"model": "pirate", "max_tokens": 64, "messages": HI}
    return body | ({} if stop is None else {"stop_sequences": stop})


def _ollama(body: dict[str, Any], stop: list[str] | None) -> dict[str, Any]:
    return {"model": "pirate", "stream": False, **body} | (
        {} if stop is None else {"options": {"stop": stop}}
    )


def _response_text(body: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


API = tuple[str, Callable[[list[str] | None], dict[str, Any]], Callable[[dict[str, Any]], str]]
APIS: dict[str, API] = {
    "chat": ("/v1/chat/completions", _chat, lambda b: b["choices"][0]["message"]["content"]),
    "completions": ("/v1/completions", _completion, lambda b: b["choices"][0]["text"]),
    "responses": ("/v1/responses", _response, _response_text),
    "anthropic": ("/v1/messages", _message, lambda b: b["content"][0]["text"]),
    "ollama chat": (
        "/api/chat",
        lambda stop: _ollama({"messages": HI}, stop),
        lambda b: b["message"]["content"],
    ),
    "ollama generate": (
        "/api/generate",
        lambda stop: _ollama({"prompt": "Hi"}, stop),
        lambda b: b["response"],
    ),
    "ollama generate raw": (
        "/api/generate",
        lambda stop: _ollama({"prompt": "Hi", "raw": True}, stop),
        lambda b: b["response"],
    ),
}


@pytest.mark.parametrize("api", list(APIS))
def test_a_presets_stop_applies_unless_the_request_clears_it(api: str) -> None:
    path, body, text = APIS[api]

    async def scenario() -> tuple[str, str, str]:
        async with fake_app(REPLY, presets={"pirate": PIRATE}) as app:
            answers = []
            for stop in (None, [], ["matey"]):
                answer = await app.http.post(path, json=body(stop))
                assert answer.status_code == 200, answer.text
                answers.append(text(answer.json()))
            return answers[0], answers[1], answers[2]

    preset_stop, cleared, own = asyncio.run(scenario())
    assert preset_stop == "Ahoy "
    assert cleared == REPLY
    assert own == "Ahoy Arr "
