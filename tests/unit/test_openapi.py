"""/openapi.json promises what the routes answer: errors as 400s in the route's own shape (never
FastAPI's 422), and the JSON or stream each generation route sends. Schemathesis found each of
these promises broken (tests/server/test_fuzz_api.py); built here without a model."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from hearth.errors import QueueTimeoutError
from hearth.protocol import anthropic, ollama
from hearth.protocol import openai as wire
from hearth.server.app import create_app
from hearth.server.http.errors import is_anthropic_path, sse_error_event
from hearth.settings import ServeSettings


@pytest.fixture()
def openapi() -> dict[str, Any]:  # after tests/conftest.py has cleared HEARTH_* from the env
    return create_app(ServeSettings()).openapi()


def operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, op) for path, item in openapi["paths"].items() for op in item.values()]


def test_validation_failures_are_documented_as_400_not_422(openapi: dict[str, Any]) -> None:
    for path, operation in operations(openapi):
        assert "422" not in operation["responses"], path
        if "requestBody" in operation:
            assert "400" in operation["responses"], path
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def _component_names(model: type[BaseModel]) -> set[str]:
    # A class name that two protocol modules share is qualified by its module in the document.
    qualified = f"{model.__module__.replace('.', '__')}__{model.__name__}"
    return {f"#/components/schemas/{name}" for name in (model.__name__, qualified)}


def test_errors_are_documented_in_the_shape_each_route_answers(openapi: dict[str, Any]) -> None:
    for path, operation in operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            # /api/... answers as Ollama does, /v1/messages... as Anthropic does, everything else
            # as OpenAI does (server/http/errors.py).
            expected: type[BaseModel] = wire.ErrorBody
            if path.startswith("/api/"):
                expected = ollama.ErrorResponse
            elif is_anthropic_path(path):
                expected = anthropic.ErrorResponse
            assert ref in _component_names(expected), (path, status)


def _validator(openapi: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # The document's components, so that `#/components/...` references resolve.
    return jsonschema.Draft202012Validator({**schema, "components": openapi["components"]})


def _success(openapi: dict[str, Any], path: str) -> dict[str, Any]:
    content: dict[str, Any] = openapi["paths"][path]["post"]["responses"]["200"]["content"]
    return content


def _check_event(openapi: dict[str, Any], path: str, data: str) -> None:
    event = _success(openapi, path)["text/event-stream"]["schema"]
    _validator(openapi, event).validate({"data": data, "event": "message"})
    if data != "[DONE]":  # contentSchema is an annotation to jsonschema: apply it by hand
        payload = event["properties"]["data"]["anyOf"][1]["contentSchema"]
        _validator(openapi, payload).validate(json.loads(data))


def test_chat_streams_are_documented_event_by_event(openapi: dict[str, Any]) -> None:
    path = "/v1/chat/completions"
    assert _success(openapi, path)["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    chunk = wire.ChatCompletionChunk(
        id="chatcmpl-1",
        choices=[wire.ChunkChoice(delta=wire.ChunkDelta(content="Hi"), index=0)],
        created=1,
        model="m",
    )
    _check_event(openapi, path, chunk.model_dump_json(exclude={"usage"}))
    failed = sse_error_event(QueueTimeoutError("waited too long")).decode()
    _check_event(openapi, path, failed.removeprefix("data: ").strip())
    _check_event(openapi, path, "[DONE]")
    with pytest.raises(jsonschema.ValidationError):
        _check_event(openapi, path, '{"choices": "not a chunk"}')


def test_completion_streams_are_documented_event_by_event(openapi: dict[str, Any]) -> None:
    path = "/v1/completions"
    piece = wire.TextCompletion(
        id="cmpl-1",
        choices=[wire.CompletionChoice(finish_reason=None, index=0, text="Hi")],
        created=1,
        model="m",
    )
    _check_event(openapi, path, piece.model_dump_json(exclude={"usage"}))
    _check_event(openapi, path, "[DONE]")


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (
            "/api/chat",
            ollama.ChatResponse(
                model="m",
                created_at="2025-01-01T00:00:00Z",
                message=ollama.ResponseMessage(content="Hi"),
                done=False,
            ),
        ),
        (
            "/api/generate",
            ollama.GenerateResponse(
                model="m", created_at="2025-01-01T00:00:00Z", response="Hi", done=False
            ),
        ),
        ("/api/chat", ollama.ErrorResponse(error="The server had an error while streaming.")),
    ],
)
def test_ndjson_streams_are_documented_line_by_line(
    openapi: dict[str, Any], path: str, line: BaseModel
) -> None:
    content = _success(openapi, path)
    assert "application/json" in content
    schema = content["application/x-ndjson"]["schema"]
    _validator(openapi, schema).validate(json.loads(line.model_dump_json(exclude_none=True)))
    with pytest.raises(jsonschema.ValidationError):
        _validator(openapi, schema).validate({"done": "yes"})
