"""Thin routes: parse (FastAPI + pydantic), hand to serving, return. No logic lives here."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hearth.protocol.embeddings import EmbeddingRequest
from hearth.protocol.extensions import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from hearth.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorBody,
    Model,
    ModelList,
)
from hearth.server.auth import require_api_key
from hearth.server.embeddings import serve_embeddings
from hearth.server.metrics import CONTENT_TYPE, render_metrics
from hearth.server.serving import check_token_ids, serve_chat, serve_completion
from hearth.server.state import ServerState

__all__ = ["extensions_router", "health_router", "openai_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 404, 413, 429, 500, 503)
}

health_router = APIRouter()
openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
extensions_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.hearth
    return state


@health_router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    state = _state(request)
    model = state.model
    stats = model.engine.stats()
    return {
        "status": "ok",
        "model": model.model_id,
        "device": state.devices[0].name if state.devices else "CPU",
        "devices": [asdict(d) for d in state.devices],
        "slots_total": stats.slots_total,
        "slots_in_use": stats.slots_in_use,
        "queue_length": stats.queue_length,
        "max_batch_size": stats.max_batch_size,
        "n_ctx_per_slot": model.n_ctx_per_slot,
        "embeddings": asdict(model.embedder.stats()) if model.embedder is not None else None,
        "engine": {
            "steps": stats.steps,
            "max_batch_tokens_seen": stats.max_batch_tokens_seen,
            "prompt_tokens_total": stats.prompt_tokens_total,
            "prompt_tokens_cached_total": stats.prompt_tokens_cached_total,
            "generated_tokens_total": stats.generated_tokens_total,
            "requests_finished": stats.requests_finished,
            "batch_size_histogram": {str(k): v for k, v in stats.batch_size_histogram.items()},
        },
    }


@health_router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    model = _state(request).model
    return Response(render_metrics(model.model_id, model.engine.stats), media_type=CONTENT_TYPE)


@openai_router.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    model = _state(request).model
    return ModelList(data=[Model(id=model.model_id, created=model.created)])


@openai_router.get("/models/{model_id:path}", response_model=Model)
async def get_model(model_id: str, request: Request) -> Model:
    model = _state(request).model_for(model_id)
    return Model(id=model.model_id, created=model.created)


@openai_router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    return await serve_chat(_state(request), body, request)


@openai_router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    return await serve_completion(_state(request), body, request)


@openai_router.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await serve_embeddings(_state(request), body, request)


@extensions_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    runner = _state(request).model.runner
    tokens = runner.tokenize(body.content, add_special=body.add_special, parse_special=True)
    return TokenizeResponse(tokens=tokens)


@extensions_router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = _state(request).model
    check_token_ids(model, body.tokens, param="tokens")
    return DetokenizeResponse(content=model.runner.detokenize(body.tokens))
