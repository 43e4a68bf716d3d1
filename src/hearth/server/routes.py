"""Thin routes: parse (FastAPI + pydantic), hand to serving, return. No logic lives here."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hearth import __version__
from hearth.protocol import ollama
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
from hearth.server.metrics import CONTENT_TYPE, render_metrics
from hearth.server.ollama import (
    list_tags,
    serve_ollama_chat,
    serve_ollama_generate,
    show_model,
)
from hearth.server.serving import check_token_ids, serve_chat, serve_completion
from hearth.server.state import ServerState

__all__ = ["extensions_router", "health_router", "ollama_router", "openai_router"]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 404, 413, 429, 500, 503)
}

health_router = APIRouter()
openai_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
extensions_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
# Ollama's native API: https://github.com/ollama/ollama/blob/main/docs/api.md
ollama_router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])


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
        "engine": {
            "steps": stats.steps,
            "max_batch_tokens_seen": stats.max_batch_tokens_seen,
            "prompt_tokens_total": stats.prompt_tokens_total,
            "prompt_tokens_cached_total": stats.prompt_tokens_cached_total,
            "prompt_tokens_decoded_total": stats.prompt_tokens_decoded_total,
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


@ollama_router.post("/chat", response_model=None)
async def ollama_chat(
    body: ollama.ChatRequest, request: Request
) -> JSONResponse | StreamingResponse:
    return await serve_ollama_chat(_state(request), body, request)


@ollama_router.post("/generate", response_model=None)
async def ollama_generate(
    body: ollama.GenerateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    return await serve_ollama_generate(_state(request), body, request)


@ollama_router.get("/tags")
async def ollama_tags(request: Request) -> ollama.TagsResponse:
    return list_tags(_state(request))


@ollama_router.post("/show")
async def ollama_show(body: ollama.ShowRequest, request: Request) -> ollama.ShowResponse:
    return show_model(_state(request).model_for(body.model))


@ollama_router.get("/version")
async def ollama_version() -> ollama.VersionResponse:
    return ollama.VersionResponse(version=__version__)
