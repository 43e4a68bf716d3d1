"""Errors to HTTP, in one place: every failure leaves as an error body in the shape of the API
its route belongs to. OpenAI's by default; Ollama's under /api/ (`is_ollama_path`); Anthropic's
under /v1/messages (`is_anthropic_path`), and on GET /v1/models when the request carries
Anthropic's `anthropic-version` header, since that route then answers Anthropic's shape too."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from hearth.errors import HearthError, InvalidRequestError, NotFoundError, ServerOverloadedError
from hearth.protocol.anthropic import ErrorResponse as AnthropicErrorBody
from hearth.protocol.ollama import ErrorResponse as OllamaErrorBody
from hearth.protocol.openai import ErrorBody

__all__ = [
    "anthropic_error_body",
    "anthropic_error_event",
    "anthropic_error_type",
    "drop_validation_responses",
    "error_response",
    "error_responses",
    "install_error_handlers",
    "is_anthropic_path",
    "is_ollama_path",
    "refusal",
    "sse_error_event",
    "validation_error",
]

logger = logging.getLogger(__name__)

# Union tags pydantic puts into an error's location after a list index (messages[0].user...):
# OpenAI's roles and content parts, then Anthropic's content blocks and tools
# (protocol/anthropic.py).
_UNION_TAGS = frozenset(
    {"developer", "system", "user", "assistant", "tool", "function"}
    | {"text", "image_url", "input_audio", "file", "refusal"}
    | {"image", "document", "search_result", "thinking", "redacted_thinking", "tool_use"}
    | {"tool_result", "tool_reference", "server_tool_use", "container_upload"}
    | {"web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result"}
    | {"bash_code_execution_tool_result", "text_editor_code_execution_tool_result"}
    | {"tool_search_tool_result", "custom", "server"}
)
_TYPE_SEGMENTS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


# Anthropic's error type for each status: https://docs.anthropic.com/en/api/errors. The first row
# whose status matches and whose class the error is an instance of wins; a status with no row is
# invalid_request_error below 500 (as Anthropic's docs say it may use that type for any other 4xx)
# and api_error from 500 up. The status itself is always Hearth's own, so a request answered on
# /v1/messages gets the same status as on /v1/chat/completions.
#
# Hearth's queue refusal stays a 429 with `Retry-After` (rate_limit_error), not Anthropic's 529
# overloaded_error: the status is decided by Hearth's queue for every API alike, a 429 tells the
# client to slow down and when to come back, and Anthropic's clients retry both. A request that
# waited in the queue past --queue-timeout (503) is overloaded_error: a transient overload, which
# Anthropic's clients retry as any 5xx. Other 503s (a model too large for --max-memory, a server
# shutting down) are api_error.
_ANTHROPIC_ERROR_TYPES: tuple[tuple[int, type[HearthError], str], ...] = (
    (400, HearthError, "invalid_request_error"),
    (401, HearthError, "authentication_error"),
    (403, HearthError, "permission_error"),
    (404, HearthError, "not_found_error"),
    (413, HearthError, "request_too_large"),
    (429, HearthError, "rate_limit_error"),
    (500, HearthError, "api_error"),
    (503, ServerOverloadedError, "overloaded_error"),
    (504, HearthError, "timeout_error"),
    (529, HearthError, "overloaded_error"),
)


def anthropic_error_type(error: HearthError) -> str:
    """The `error.type` of Anthropic's body for this error (`_ANTHROPIC_ERROR_TYPES`)."""
    for status, cls, error_type in _ANTHROPIC_ERROR_TYPES:
        if error.status_code == status and isinstance(error, cls):
            return error_type
    return "invalid_request_error" if error.status_code < 500 else "api_error"


def anthropic_error_body(error: HearthError) -> dict[str, Any]:
    """Anthropic's error body: {"type": "error", "error": {"type": ..., "message": ...}}."""
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(error), "message": error.message},
    }


def anthropic_error_event(error: HearthError) -> bytes:
    """The same body as the last event of an Anthropic stream that failed midway."""
    return b"event: error\ndata: " + json.dumps(anthropic_error_body(error)).encode() + b"\n\n"


def error_response(
    error: HearthError, *, ollama: bool = False, anthropic: bool = False
) -> JSONResponse:
    body: dict[str, Any]
    if anthropic:
        body = anthropic_error_body(error)
    elif ollama:
        # Ollama's native API (/api/...) answers errors as {"error": "message"}; its clients read
        # that.
        body = {"error": error.message}
    else:
        body = error.to_body()
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def refusal(error: HearthError, scope: Scope) -> JSONResponse:
    """`error` in the body shape of the API the request's path belongs to, for the middleware
    that refuses a request before any route runs (drain, hosts, origins, limits, surrogates)."""
    path: str = scope["path"]
    # GET /v1/models answers Anthropic's shape to Anthropic's clients (_is_anthropic).
    headers = dict(scope.get("headers") or ())
    anthropic = is_anthropic_path(path) or (
        path.startswith("/v1/models") and b"anthropic-version" in headers
    )
    return error_response(error, ollama=is_ollama_path(path), anthropic=anthropic)


def error_responses(
    *statuses: int, ollama: bool = False, anthropic: bool = False
) -> dict[int | str, dict[str, Any]]:
    """/openapi.json's entries for the errors a route answers, in the body shape it uses."""
    body: type[BaseModel] = ErrorBody
    if anthropic:
        body = AnthropicErrorBody
    elif ollama:
        body = OllamaErrorBody
    return {status: {"model": body} for status in statuses}


def drop_validation_responses(openapi: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents a 422 for every route that validates input; Hearth answers a validation
    failure with a 400 (`on_validation_error`), documented with the route's other errors."""
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return openapi


def is_ollama_path(path: str) -> bool:
    """Ollama's native API (/api/...) answers errors in its own shape."""
    return path.startswith("/api/")


def is_anthropic_path(path: str) -> bool:
    """Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) answers errors in its
    own shape."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _is_anthropic_models(request: Request) -> bool:
    # GET /v1/models serves both APIs: Anthropic's clients always send `anthropic-version`.
    path = request.url.path
    on_models = path == "/v1/models" or path.startswith("/v1/models/")
    return on_models and "anthropic-version" in request.headers


def _is_anthropic(request: Request) -> bool:
    return is_anthropic_path(request.url.path) or _is_anthropic_models(request)


def _error_response(error: HearthError, request: Request) -> JSONResponse:
    """The error in the shape of the API the request was made to."""
    ollama = is_ollama_path(request.url.path)
    return error_response(error, ollama=ollama, anthropic=_is_anthropic(request))


def sse_error_event(error: HearthError) -> bytes:
    """The same body as a JSON error, as the last event of a stream that failed midway."""
    return b"data: " + json.dumps(error.to_body()).encode() + b"\n\n"


def format_param(loc: Sequence[int | str]) -> str | None:
    parts: list[str] = []
    previous: int | str | None = None
    for position, segment in enumerate(loc):
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif (
            segment in _TYPE_SEGMENTS
            or "[" in segment
            or "-" in segment
            # A union's tag comes after the list index, and a field after it; last, it is a field
            # of a list item that is no union (system[0].text).
            or (isinstance(previous, int) and segment in _UNION_TAGS and position < len(loc) - 1)
        ):
            pass  # pydantic's union branches, not a field
        else:
            parts.append(f".{segment}" if parts else segment)
        previous = segment
    return "".join(parts) or None


def _discriminator(error: Any) -> str | None:
    # A tagged union's field ('type', 'role'), as pydantic quotes it in the error's context; a
    # callable discriminator has no field to name.
    quoted = (error.get("ctx") or {}).get("discriminator", "")
    if isinstance(quoted, str) and len(quoted) > 2 and quoted[0] == quoted[-1] == "'":
        return quoted[1:-1]
    return None


def validation_error(errors: Sequence[Any], *, api: str = "OpenAI") -> InvalidRequestError:
    """The first pydantic error, in OpenAI's words, with `param` naming the field (Anthropic's
    body has no `param`: every message names the field too)."""
    if not errors:
        return InvalidRequestError("Invalid request.")
    first = errors[0]
    loc = [s for s in first.get("loc", ()) if s != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            f"aren't using your HTTP library correctly. The {api} API expects a JSON payload.)",
            code="invalid_json",
        )
    param = format_param(loc)
    field = _discriminator(first)
    if kind in ("union_tag_invalid", "union_tag_not_found") and field is not None:
        # An unknown or missing `type` (or `role`): name the field, not only the item.
        param = f"{param}.{field}" if param else field
        if kind == "union_tag_not_found":
            kind = "missing"
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    if kind == "missing" and param is None:
        # No body at all: FastAPI reports the body itself as the missing field.
        return InvalidRequestError(
            f"The request has no body: the {api} API expects a JSON object.",
            code="invalid_json",
        )
    if kind == "missing":
        return InvalidRequestError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind == "model_attributes_type" and not loc:
        return InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    message = first.get("msg", "Invalid value")
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}." if param else f"{message}.",
        param=param,
        code="invalid_value",
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_hearth_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HearthError)
        return _error_response(exc, request)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        api = "Anthropic" if _is_anthropic(request) else "OpenAI"
        return _error_response(validation_error(exc.errors(), api=api), request)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error: HearthError
        if exc.status_code == 404:
            error = NotFoundError(f"Unknown route: {exc.detail}" if exc.detail else "Not found.")
        else:
            error = HearthError(str(exc.detail))
            error.status_code = exc.status_code
            error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = _error_response(error, request)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        error = HearthError("The server had an error while processing your request.")
        return _error_response(error, request)

    app.add_exception_handler(HearthError, on_hearth_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
