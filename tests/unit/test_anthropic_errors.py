"""Anthropic's error shape (server/http/errors.py) and API keys in x-api-key
(server/http/auth.py): the mapping table, then the handlers and the auth dependency on a small
in-process app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import anthropic
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

from hearth.errors import (
    AuthenticationError,
    ClientDisconnectedError,
    ConflictError,
    ContextLengthExceededError,
    EngineError,
    HearthError,
    InsufficientMemoryError,
    ModelLoadError,
    ModelNotFoundError,
    ModelsBusyError,
    PayloadTooLargeError,
    QueueTimeoutError,
    ServerOverloadedError,
    ServerShuttingDownError,
    UnsupportedParameterError,
    UpstreamError,
)
from hearth.protocol.anthropic import CountTokensRequest, CountTokensResponse, MessagesRequest
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import (
    anthropic_error_body,
    anthropic_error_event,
    anthropic_error_type,
    error_responses,
    install_error_handlers,
    is_anthropic_path,
)
from hearth.server.http.limits import BodySizeLimit

KEY = "sk-local"


def _status(error: HearthError, status: int) -> HearthError:
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (UnsupportedParameterError("x", param="thinking"), 400, "invalid_request_error"),
        (ContextLengthExceededError("x"), 400, "invalid_request_error"),
        (AuthenticationError("x"), 401, "authentication_error"),
        (_status(HearthError("x"), 403), 403, "permission_error"),
        (ModelNotFoundError("x"), 404, "not_found_error"),
        (_status(HearthError("x"), 405), 405, "invalid_request_error"),  # any other 4xx
        (ConflictError("x"), 409, "invalid_request_error"),
        (PayloadTooLargeError("x"), 413, "request_too_large"),
        (ServerOverloadedError("x"), 429, "rate_limit_error"),  # Hearth's queue is full
        (ClientDisconnectedError("x"), 499, "invalid_request_error"),
        (HearthError("x"), 500, "api_error"),
        (EngineError("x"), 500, "api_error"),
        (ModelLoadError("x"), 500, "api_error"),
        (UpstreamError("x"), 502, "api_error"),
        (QueueTimeoutError("x"), 503, "overloaded_error"),  # waited past --queue-timeout
        (ModelsBusyError("x"), 503, "overloaded_error"),
        (InsufficientMemoryError("x"), 503, "api_error"),  # retrying will not help
        (ServerShuttingDownError("x"), 503, "api_error"),
        (_status(HearthError("x"), 504), 504, "timeout_error"),
        (_status(HearthError("x"), 529), 529, "overloaded_error"),
    ],
)
def test_anthropic_error_type_from_status_and_class(
    error: HearthError, status: int, error_type: str
) -> None:
    assert error.status_code == status  # the status stays Hearth's own
    assert anthropic_error_type(error) == error_type


def test_anthropic_body_and_stream_event() -> None:
    error = ModelNotFoundError("The model 'claude' does not exist.", param="model")
    body = anthropic_error_body(error)
    assert body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model 'claude' does not exist."},
    }
    event = anthropic_error_event(error)
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert json.loads(event.removeprefix(b"event: error\ndata: ")) == body


@pytest.mark.parametrize(
    ("path", "anthropic_shape"),
    [
        ("/v1/messages", True),
        ("/v1/messages/count_tokens", True),
        ("/v1/messages/batches", True),
        ("/v1/messagesx", False),
        ("/v1/chat/completions", False),
        ("/api/chat", False),
    ],
)
def test_anthropic_paths(path: str, anthropic_shape: bool) -> None:
    assert is_anthropic_path(path) is anthropic_shape


def test_openapi_entries_use_anthropic_body() -> None:
    entries = error_responses(400, 529, anthropic=True)
    assert entries[400]["model"].__module__ == "hearth.protocol.anthropic"
    assert entries[529]["model"].__name__ == "ErrorResponse"


# -- in process: the handlers and the auth dependency ------------------------------------------


def _app(*, keys: list[str], max_body_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @router.post("/messages", responses=error_responses(400, 401, 404, 413, anthropic=True))
    async def messages(request: MessagesRequest) -> dict[str, str]:
        if request.model != "m":
            raise ModelNotFoundError(f"The model '{request.model}' does not exist.")
        if request.thinking is not None:
            raise UnsupportedParameterError("thinking is not supported.", param="thinking")
        return {"ok": request.model}

    @router.post("/messages/count_tokens")
    async def count_tokens(request: CountTokensRequest) -> CountTokensResponse:
        raise QueueTimeoutError("Waited too long.", headers={"Retry-After": "1"})

    @router.get("/models")
    async def models() -> dict[str, str]:
        raise ServerOverloadedError("Busy.", headers={"Retry-After": "1"})

    @router.post("/chat/completions")
    async def chat() -> dict[str, str]:
        return {}

    app.include_router(router)
    app.state.hearth = SimpleNamespace(settings=SimpleNamespace(api_key=keys))
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with TestClient(_app(keys=["other-key", KEY]), raise_server_exceptions=False) as test_client:
        yield test_client


BODY = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
ANTHROPIC = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def anthropic_error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    return response.status_code, body["error"]["type"], body["error"]["message"]


def test_the_key_may_come_as_bearer_or_x_api_key(client: TestClient) -> None:
    for headers in (
        {"x-api-key": KEY},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": "Bearer wrong", "x-api-key": KEY},  # a client may send both
        {"Authorization": f"Bearer {KEY}", "x-api-key": "wrong"},
    ):
        assert client.post("/v1/messages", json=BODY, headers=headers).status_code == 200
        assert client.post("/v1/chat/completions", headers=headers).status_code == 200


def test_a_missing_or_wrong_key_is_401_in_the_route_shape(client: TestClient) -> None:
    missing = client.post("/v1/messages", json=BODY)
    status, kind, message = anthropic_error(missing)
    assert (status, kind) == (401, "authentication_error")
    assert "x-api-key" in message and "Authorization" in message
    wrong = client.post("/v1/messages", json=BODY, headers={"x-api-key": "nope"})
    assert anthropic_error(wrong)[:2] == (401, "authentication_error")
    # The same key check answers OpenAI's shape elsewhere.
    openai = client.post("/v1/chat/completions", headers={"x-api-key": "nope"})
    assert openai.status_code == 401
    assert openai.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/v1/chat/completions").json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("body", "status", "kind", "words"),
    [
        ({k: v for k, v in BODY.items() if k != "max_tokens"}, 400, "invalid_request_error",
         "max_tokens"),
        ({**BODY, "prompt": "x"}, 400, "invalid_request_error", "prompt"),
        ({**BODY, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400,
         "invalid_request_error", "messages[0].content[0].type"),
        ({**BODY, "thinking": {"type": "enabled", "budget_tokens": 2048}}, 400,
         "invalid_request_error", "thinking"),
        ({**BODY, "model": "claude"}, 404, "not_found_error", "claude"),
    ],
)  # fmt: skip
def test_validation_and_hearth_errors_answer_anthropic_shape(
    client: TestClient, body: dict[str, object], status: int, kind: str, words: str
) -> None:
    response = client.post("/v1/messages", json=body, headers=ANTHROPIC)
    got_status, got_kind, message = anthropic_error(response)
    assert (got_status, got_kind) == (status, kind)
    assert words in message


def test_bad_json_unknown_routes_and_queue_errors_answer_anthropic_shape(
    client: TestClient,
) -> None:
    bad_json = client.post(
        "/v1/messages",
        content=b"{nope",
        headers={**ANTHROPIC, "content-type": "application/json"},
    )
    status, kind, message = anthropic_error(bad_json)
    assert (status, kind) == (400, "invalid_request_error") and "OpenAI" not in message
    unknown = client.post("/v1/messages/nope", json=BODY, headers=ANTHROPIC)
    assert anthropic_error(unknown)[:2] == (404, "not_found_error")
    # count_tokens takes no max_tokens: refused by name, in the same shape
    count = client.post("/v1/messages/count_tokens", json=BODY, headers=ANTHROPIC)
    status, kind, message = anthropic_error(count)
    assert (status, kind) == (400, "invalid_request_error") and "max_tokens" in message
    timed_out = client.post(
        "/v1/messages/count_tokens",
        json={k: v for k, v in BODY.items() if k != "max_tokens"},
        headers=ANTHROPIC,
    )
    assert anthropic_error(timed_out)[:2] == (503, "overloaded_error")
    assert timed_out.headers["retry-after"] == "1"


def test_models_answer_anthropic_shape_only_for_anthropic_clients(client: TestClient) -> None:
    anthropic_client = client.get("/v1/models", headers=ANTHROPIC)
    assert anthropic_error(anthropic_client)[:2] == (429, "rate_limit_error")
    assert anthropic_client.headers["retry-after"] == "1"
    openai_client = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert openai_client.status_code == 429
    assert openai_client.json()["error"]["type"] == "server_overloaded"


def test_a_body_over_the_limit_is_413_request_too_large() -> None:
    with TestClient(_app(keys=[], max_body_bytes=64)) as small:
        big = {**BODY, "system": "x" * 200}
        status, kind, _ = anthropic_error(small.post("/v1/messages", json=big))
        assert (status, kind) == (413, "request_too_large")
        openai = small.post("/v1/chat/completions", json=big)
        assert openai.status_code == 413 and "error" in openai.json()


def test_the_anthropic_sdk_reads_the_errors(client: TestClient) -> None:
    sdk = anthropic.Anthropic(
        api_key=KEY, base_url=str(client.base_url), http_client=client, max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk.messages.create(
            model="claude", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert missing.value.status_code == 404
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(
            api_key="nope", base_url=str(client.base_url), http_client=client, max_retries=0
        ).messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
