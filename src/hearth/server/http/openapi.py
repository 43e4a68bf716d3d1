"""What /openapi.json says about the routes that answer either JSON or a stream: FastAPI derives
the JSON body from a response model, but a stream's events are documented here.

OpenAPI 3.1 has no keyword for the items of a stream, so a stream's `schema` describes one item,
as Schemathesis and OpenAPI 3.2's `itemSchema` read it: one server-sent event (its `data` is a
JSON chunk, an error, or `[DONE]`), or one NDJSON line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from hearth.protocol import ollama
from hearth.protocol.openai import ErrorBody

__all__ = ["json_or_event_stream", "json_or_named_events", "json_or_ndjson"]


def _inlined(model: Any) -> dict[str, Any]:
    """The type's JSON schema (as serialized) with its `$defs` inlined: a stream's schema is not
    a component, so a `#/$defs/...` reference would point nowhere in the document."""
    schema = TypeAdapter(model).json_schema(mode="serialization")
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {key: value for key, value in node.items() if key != "$ref"}
                return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_or_event_stream(
    body: type[BaseModel], chunk: type[BaseModel]
) -> dict[int | str, dict[str, Any]]:
    """A /v1 route's 200: `body` as JSON, or with `stream: true` server-sent events whose data is
    a `chunk`, an error that ended the stream midway, or the final `[DONE]`."""
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [_inlined(chunk), _inlined(ErrorBody)]},
                    },
                ]
            }
        },
    }
    return {200: {"model": body, "content": {"text/event-stream": {"schema": event}}}}


def json_or_named_events(body: type[BaseModel], event: Any, error: Any) -> dict[int | str, Any]:
    """The Responses and Messages APIs' 200: `body` as JSON, or with `stream: true` server-sent
    events, each named by an `event:` line, whose data is one `event` (a union of the API's
    event types) or the API's `error` event; there is no `[DONE]`."""
    item = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_inlined(event), _inlined(error)]},
            },
        },
    }
    return {200: {"model": body, "content": {"text/event-stream": {"schema": item}}}}


def json_or_ndjson(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """An Ollama route's 200: one `body` as JSON with `stream: false`, else NDJSON lines of the
    same shape, the last one `done` (for /api/pull, `status: "success"`); a failure after the
    first line ends it with an error line."""
    line = {"anyOf": [_inlined(body), _inlined(ollama.ErrorResponse)]}
    return {200: {"model": body, "content": {"application/x-ndjson": {"schema": line}}}}
