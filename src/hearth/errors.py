"""The one exception hierarchy. Each error knows its HTTP status and OpenAI error type.

`hearth.server.http.errors` turns these into responses in one place; nothing else maps errors
to HTTP.
The body shape is OpenAI's: https://platform.openai.com/docs/guides/error-codes
"""

from __future__ import annotations

import errno

__all__ = [
    "AuthenticationError",
    "ClientDisconnectedError",
    "ConflictError",
    "ContextLengthExceededError",
    "EngineError",
    "HearthError",
    "InsufficientMemoryError",
    "InsufficientStorageError",
    "InvalidRequestError",
    "ModelCrashedError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelsBusyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "QueueTimeoutError",
    "ServerDrainingError",
    "ServerOverloadedError",
    "ServerShuttingDownError",
    "UnsupportedParameterError",
    "UpstreamError",
    "no_space",
    "unsupported",
]


class HearthError(Exception):
    """Base of every error Hearth reports to a client."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(HearthError):
    status_code = 400
    error_type = "invalid_request_error"


class UnsupportedParameterError(InvalidRequestError):
    """A spec field Hearth cannot honour: refused by name instead of silently ignored."""

    default_code = "unsupported_parameter"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(HearthError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(HearthError):
    """The request is refused whoever sends it: a `Host` the server does not answer to."""

    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFoundError(HearthError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class ConflictError(HearthError):
    """The request contradicts the server's state: a model in use, a download already running."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(HearthError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class ServerOverloadedError(HearthError):
    status_code = 429
    error_type = "server_overloaded"
    default_code = "server_overloaded"


class QueueTimeoutError(ServerOverloadedError):
    """Waited in the queue longer than --queue-timeout without getting a slot."""

    status_code = 503


class ModelsBusyError(QueueTimeoutError):
    """A model had to be loaded, but every loaded model stayed busy past --queue-timeout, so
    none could be unloaded to make room for it (--max-loaded-models, --max-memory)."""

    default_code = "models_busy"


class InsufficientMemoryError(HearthError):
    """A model that needs more memory than --max-memory allows, even with nothing else loaded."""

    status_code = 503
    error_type = "server_error"
    default_code = "insufficient_memory"


class InsufficientStorageError(HearthError):
    """The disk is full (or a file grew past the process's size limit) while writing something
    the request sent: a blob, a created model. Nothing was generated, so nothing is lost."""

    status_code = 507
    error_type = "server_error"
    default_code = "insufficient_storage"


class ModelLoadError(HearthError):
    """A model in the catalog that llama.cpp could not load (a damaged or missing file)."""

    status_code = 500
    error_type = "server_error"
    default_code = "model_load_failed"


class ServerShuttingDownError(HearthError):
    """The server is stopping: requests still running when the grace period ends get this."""

    status_code = 503
    error_type = "server_error"
    default_code = "server_shutting_down"


class ServerDrainingError(ServerShuttingDownError):
    """The server is stopping: it lets running requests finish and admits no new one (503 with
    `Retry-After`)."""

    default_code = "server_draining"


class ClientDisconnectedError(HearthError):
    """The client left before the answer was ready; its engine request is already aborted.
    Nobody reads this response: it only ends the handler without an error in the log."""

    status_code = 499  # nginx's "client closed request"
    error_type = "client_closed_request"


class UpstreamError(HearthError):
    """A server Hearth depends on failed: the Hugging Face hub during a pull."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"


class EngineError(HearthError):
    """The engine failed a request (a llama.cpp decode error, a shut-down engine)."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class KvCacheFullError(EngineError):
    """A shared KV cache (--kv-unified) ran out of room mid-generation: the request holding the
    most of it ends, so that the others go on."""

    status_code = 503
    default_code = "kv_cache_full"


class ModelCrashedError(EngineError):
    """The model's runner process died (a native fault in llama.cpp, an out-of-memory kill) or
    stopped making progress. Its running requests end with this; the server and every other
    model go on, and the model is loaded again by itself."""

    status_code = 503
    default_code = "model_crashed"


def unsupported(param: str, why: str) -> UnsupportedParameterError:
    """A field the client sent that Hearth cannot honour, refused by name."""
    return UnsupportedParameterError(f"'{param}' is not supported: {why}", param=param)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space(exc: OSError) -> bool:
    """Whether a write failed for want of space: a full disk, a quota, a file size limit."""
    return exc.errno in _NO_SPACE
