"""Errors to HTTP, in one place: every failure leaves as an OpenAI error body."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hearth.errors import HearthError, InvalidRequestError, NotFoundError
from hearth.protocol.ollama import ErrorResponse as OllamaErrorBody
from hearth.protocol.openai import ErrorBody

__all__ = [
    "drop_validation_responses",
    "error_response",
    "error_responses",
    "install_error_handlers",
    "is_ollama_path",
    "sse_error_event",
    "validation_error",
]

logger = logging.getLogger(__name__)

# Union tags pydantic puts into an error's location after a list index (messages[0].user...).
_UNION_TAGS = frozenset(
    {"developer", "system", "user", "assistant", "tool", "function"}
    | {"text", "image_url", "input_audio", "file", "refusal"}
)
_TYPE_SEGMENTS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def error_response(error: HearthError, *, ollama: bool = False) -> JSONResponse:
    # Ollama's native API (/api/...) answers errors as {"error": "message"}; its clients read that.
    body = {"error": error.message} if ollama else error.to_body()
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


def error_responses(*statuses: int, ollama: bool = False) -> dict[int | str, dict[str, Any]]:
    """/openapi.json's entries for the errors a route answers, in the body shape it uses."""
    body = OllamaErrorBody if ollama else ErrorBody
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


def _is_ollama(request: Request) -> bool:
    return is_ollama_path(request.url.path)


def sse_error_event(error: HearthError) -> bytes:
    """The same body as a JSON error, as the last event of a stream that failed midway."""
    return b"data: " + json.dumps(error.to_body()).encode() + b"\n\n"


def format_param(loc: Sequence[int | str]) -> str | None:
    parts: list[str] = []
    previous: int | str | None = None
    for segment in loc:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif (
            segment in _TYPE_SEGMENTS
            or "[" in segment
            or "-" in segment
            or (isinstance(previous, int) and segment in _UNION_TAGS)
        ):
            pass  # pydantic's union branches, not a field
        else:
            parts.append(f".{segment}" if parts else segment)
        previous = segment
    return "".join(parts) or None


def validation_error(errors: Sequence[Any]) -> InvalidRequestError:
    """The first pydantic error, in OpenAI's words, with `param` naming the field."""
    if not errors:
        return InvalidRequestError("Invalid request.")
    first = errors[0]
    loc = [s for s in first.get("loc", ()) if s != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        )
    param = format_param(loc)
    if kind == "extra_forbidden":
        return InvalidRequestError(
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
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
        return error_response(exc, ollama=_is_ollama(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc.errors()), ollama=_is_ollama(request))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error: HearthError
        if exc.status_code == 404:
            error = NotFoundError(f"Unknown route: {exc.detail}" if exc.detail else "Not found.")
        else:
            error = HearthError(str(exc.detail))
            error.status_code = exc.status_code
            error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = error_response(error, ollama=_is_ollama(request))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        error = HearthError("The server had an error while processing your request.")
        return error_response(error, ollama=_is_ollama(request))

    app.add_exception_handler(HearthError, on_hearth_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
