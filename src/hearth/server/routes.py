"""Thin routes: parse (FastAPI + pydantic), hand to serving, return. No logic lives here."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hearth import __version__
from hearth.engine.types import EngineStats
from hearth.errors import UnsupportedParameterError
from hearth.models import registry
from hearth.models.chat_template import ChatTemplate
from hearth.models.gguf_info import read_gguf_info
from hearth.protocol import anthropic as anthropic_wire
from hearth.protocol import ollama
from hearth.protocol import responses as responses_wire
from hearth.protocol.embeddings import EmbeddingList, EmbeddingRequest
from hearth.protocol.extensions import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from hearth.protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    Model,
    ModelList,
    TextCompletion,
)
from hearth.server.anthropic_messages import count_tokens, serve_messages
from hearth.server.auth import key_owner, require_api_key
from hearth.server.embeddings import serve_embeddings
from hearth.server.errors import error_responses
from hearth.server.leases import with_model
from hearth.server.metrics import CONTENT_TYPE, ModelMetrics, render_metrics
from hearth.server.model_routes import iso_time
from hearth.server.ollama import (
    list_tags,
    serve_ollama_chat,
    serve_ollama_embed,
    serve_ollama_embeddings,
    serve_ollama_generate,
    show_model,
)
from hearth.server.ollama_models import copy_model, delete_model, serve_pull
from hearth.server.openai_chat import serve_chat
from hearth.server.openai_completions import serve_completion
from hearth.server.openai_responses import (
    delete_response,
    list_input_items,
    retrieve_response,
    serve_response,
)
from hearth.server.openapi import json_or_event_stream, json_or_named_events, json_or_ndjson
from hearth.server.prepare import check_token_ids
from hearth.server.state import ServerState

__all__ = [
    "anthropic_router",
    "extensions_router",
    "health_router",
    "ollama_router",
    "openai_router",
]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

health_router = APIRouter()
openai_router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(*_STATUSES)
)
# Anthropic's Messages API, with its own error shape: https://docs.anthropic.com/en/api/messages
anthropic_router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*_STATUSES, anthropic=True),
)
extensions_router = APIRouter(
    dependencies=[Depends(require_api_key)], responses=error_responses(*_STATUSES)
)
# Ollama's native API: https://github.com/ollama/ollama/blob/main/docs/api.md
# Every route needs the API key when keys are set, the store-changing ones included.
ollama_router = APIRouter(
    prefix="/api",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*_STATUSES, ollama=True),
)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.hearth
    return state


def _engine_fields(stats: EngineStats) -> dict[str, Any]:
    return {
        "steps": stats.steps,
        "max_batch_tokens_seen": stats.max_batch_tokens_seen,
        "prompt_tokens_total": stats.prompt_tokens_total,
        "prompt_tokens_cached_total": stats.prompt_tokens_cached_total,
        "prompt_tokens_decoded_total": stats.prompt_tokens_decoded_total,
        "generated_tokens_total": stats.generated_tokens_total,
        "draft_tokens_total": stats.draft_tokens_total,
        "draft_tokens_accepted_total": stats.draft_tokens_accepted_total,
        "requests_finished": stats.requests_finished,
        "step_ms_by_rows": {
            str(rows): round(seconds * 1000, 3)
            for rows, seconds in sorted(stats.step_seconds_by_rows.items())
        },
        "batch_size_histogram": {str(k): v for k, v in stats.batch_size_histogram.items()},
    }


@health_router.head("/", include_in_schema=False)
async def alive() -> Response:
    """200 to `HEAD /`: the check clients make before their first request (Claude Code,
    Ollama's clients, which know it from Ollama's "Ollama is running")."""
    return Response(status_code=200)


@health_router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """The top-level fields describe the startup model (--model); `models` has one entry per
    model loaded or loading, and `loading` names those still loading. `status` is "draining"
    while the server stops (still a 200); a model whose engine failed is "failed", with its
    `error`, until the next request for it loads it again."""
    state = _state(request)
    model = state.model
    n_ctx: int | None  # None: the model's own default, decided when it loads
    if model is not None:
        stats, n_ctx = model.engine.stats(), model.n_ctx_per_slot
    else:  # unloaded (keep_alive, eviction): what it will have once a request loads it again
        spec = state.catalog.spec(state.model_id)
        stats, n_ctx = EngineStats(slots_total=spec.parallel), spec.ctx_size
    loading = state.models.loading()
    per_model: list[dict[str, Any]] = [{"name": name, "state": "loading"} for name in loading]
    for status in state.models.snapshot():
        model_stats = status.model.engine.stats()
        fault = status.model.fault
        per_model.append(
            {
                "name": status.name,
                "state": "failed" if fault is not None else "loaded",
                **({"error": fault} if fault is not None else {}),
                "slots_total": model_stats.slots_total,
                "slots_in_use": model_stats.slots_in_use,
                "queue_length": model_stats.queue_length,
                "n_ctx_per_slot": status.model.n_ctx_per_slot,
                "size": status.size_bytes,
                "expires_at": iso_time(status.expires_at),
                "weights": status.model.weights.as_dict() if status.model.weights else None,
            }
        )
    return {
        "status": "draining" if state.drain.draining else "ok",
        "model": state.model_id,
        "model_loaded": model is not None,
        "device": state.devices[0].name if state.devices else "CPU",
        "devices": [asdict(d) for d in state.devices],
        "cpu": state.cpu.as_dict() if state.cpu is not None else None,
        "slots_total": stats.slots_total,
        "slots_in_use": stats.slots_in_use,
        "queue_length": stats.queue_length,
        "max_batch_size": stats.max_batch_size,
        "n_ctx_per_slot": n_ctx,
        "embeddings": (
            asdict(model.embedder.stats())
            if model is not None and model.embedder is not None
            else None
        ),
        "engine": _engine_fields(stats),
        "loading": loading,
        "models": per_model,
    }


@health_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(401),
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics; behind the API key when keys are set, unless --metrics-public."""
    state = _state(request)
    if not state.settings.metrics_public:
        await require_api_key(request)
    models = [
        ModelMetrics(status.name, status.model.engine.stats(), status.model.engine.request_stats())
        for status in state.models.snapshot()
    ]
    text = render_metrics(
        models,
        loading=len(state.models.loading()),
        http=getattr(request.app.state, "http_counts", None),
    )
    return Response(text, media_type=CONTENT_TYPE)


def _model_card(state: ServerState, name: str, owned_by: str = "hearth") -> Model:
    loaded = state.models.get(name)
    created = loaded.created if loaded is not None else state.started
    return Model(id=name, created=created, owned_by=owned_by)


def _anthropic_card(state: ServerState, name: str) -> anthropic_wire.ModelInfo:
    card = _model_card(state, name)
    return anthropic_wire.ModelInfo(
        id=name, display_name=name, created_at=datetime.fromtimestamp(card.created, UTC)
    )


def _wants_anthropic(request: Request) -> bool:
    # Anthropic's clients always send `anthropic-version`; OpenAI's never do.
    return "anthropic-version" in request.headers


@openai_router.get(
    "/models",
    response_model=None,
    responses={200: {"model": ModelList | anthropic_wire.ModelListPage}},
)
async def list_models(request: Request) -> JSONResponse:
    """Every model a request may name, loaded or not (a request loads it on demand). In
    Anthropic's shape when the request carries `anthropic-version`, else OpenAI's."""
    state = _state(request)
    # A listing shows what is on disk now, as it did before the index: its stats off the loop.
    await asyncio.to_thread(state.catalog.index.refresh)
    names = state.catalog.names()
    if _wants_anthropic(request):
        page = anthropic_wire.ModelListPage(
            data=[_anthropic_card(state, name) for name in names],
            has_more=False,
            first_id=names[0] if names else None,
            last_id=names[-1] if names else None,
        )
        return JSONResponse(page.model_dump(mode="json"))
    # A model read in place from Ollama's store is Ollama's: it says so.
    in_ollama_store = {e.name for e in state.catalog.index.entries() if e.in_ollama_store}
    cards = [_model_card(state, n, "ollama" if n in in_ollama_store else "hearth") for n in names]
    listing = ModelList(data=cards)
    return JSONResponse(listing.model_dump(mode="json"))


@openai_router.get(
    "/models/{model_id:path}",
    response_model=None,
    responses={200: {"model": Model | anthropic_wire.ModelInfo}},
)
async def get_model(model_id: str, request: Request) -> JSONResponse:
    state = _state(request)
    await state.catalog.known(model_id)
    if _wants_anthropic(request):
        return JSONResponse(_anthropic_card(state, model_id).model_dump(mode="json"))
    card = _model_card(state, model_id)
    card.capabilities = await asyncio.to_thread(_capabilities, state, model_id)
    return JSONResponse(card.model_dump(mode="json"))


def _capabilities(state: ServerState, name: str) -> list[str]:
    """What the model can do, from its chat template: the loaded one, else its GGUF header
    (blocking: call in a thread)."""
    loaded = state.models.get(name)
    if loaded is not None:
        template = loaded.chat_template
    else:
        source = state.catalog.spec(name).source or registry.DEFAULT_MODEL_ID
        is_file = source.lower().endswith(".gguf")
        path = Path(source).expanduser() if is_file else registry.find(source).header_path
        info = read_gguf_info(path, require_complete=False)
        template = ChatTemplate(info.chat_template, architecture=info.architecture)
    capabilities = ["completion", "tools"]
    if template.reasoning is not None:
        capabilities.append("thinking")
    return capabilities


@openai_router.post(
    "/chat/completions",
    response_model=None,
    responses=json_or_event_stream(ChatCompletion, ChatCompletionChunk),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_chat(state, model, body, request),
    )


@openai_router.post(
    "/completions",
    response_model=None,
    responses=json_or_event_stream(TextCompletion, TextCompletion),
)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_completion(state, model, body, request),
    )


@openai_router.post(
    "/responses",
    response_model=None,
    responses=json_or_named_events(
        responses_wire.Response, responses_wire.ResponseStreamEvent, responses_wire.ErrorEvent
    ),
)
async def create_response(
    body: responses_wire.ResponseCreateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_response(state, model, body, request),
    )


@openai_router.get(
    "/responses/{response_id}",
    response_model=None,
    responses={200: {"model": responses_wire.Response}},
)
async def get_response(
    response_id: str,
    request: Request,
    stream: bool = False,
    include: Annotated[list[str] | None, Query()] = None,
) -> JSONResponse:
    return await retrieve_response(
        _state(request),
        response_id,
        stream=stream,
        include=include or [],
        owner=key_owner(request),
    )


@openai_router.delete("/responses/{response_id}")
async def remove_response(response_id: str, request: Request) -> responses_wire.DeletedResponse:
    return await delete_response(_state(request), response_id, key_owner(request))


@openai_router.get("/responses/{response_id}/input_items")
async def response_input_items(
    response_id: str,
    request: Request,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query()] = None,
) -> responses_wire.InputItemList:
    if include:
        raise UnsupportedParameterError(
            "'include' is not supported: no extra output data is served.", param="include"
        )
    return await list_input_items(
        _state(request),
        response_id,
        after=after,
        before=before,
        limit=limit,
        order=order,
        owner=key_owner(request),
    )


@openai_router.post("/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    state = _state(request)
    return await with_model(
        state, body.model, None, lambda model: serve_embeddings(state, model, body, request)
    )


@anthropic_router.post(
    "/messages",
    response_model=None,
    responses=json_or_named_events(
        anthropic_wire.Message, anthropic_wire.StreamEvent, anthropic_wire.ErrorResponse
    ),
)
async def messages(
    body: anthropic_wire.MessagesRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_messages(state, model, body, request),
    )


@anthropic_router.post("/messages/count_tokens")
async def messages_count_tokens(
    body: anthropic_wire.CountTokensRequest, request: Request
) -> anthropic_wire.CountTokensResponse:
    state = _state(request)
    with await state.acquire(body.model) as lease:
        return await count_tokens(lease.model, body)


@extensions_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    state = _state(request)
    with await state.acquire(body.model or state.model_id) as lease:
        runner = lease.model.runner
        tokens = await asyncio.to_thread(
            runner.tokenize, body.content, add_special=body.add_special, parse_special=True
        )
    return TokenizeResponse(tokens=tokens)


@extensions_router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state = _state(request)
    with await state.acquire(body.model or state.model_id) as lease:
        check_token_ids(lease.model, body.tokens, param="tokens")
        content = lease.model.runner.detokenize(body.tokens)
    return DetokenizeResponse(content=content)


@ollama_router.post("/chat", response_model=None, responses=json_or_ndjson(ollama.ChatResponse))
async def ollama_chat(
    body: ollama.ChatRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_chat(state, model, body, request),
    )


@ollama_router.post(
    "/generate", response_model=None, responses=json_or_ndjson(ollama.GenerateResponse)
)
async def ollama_generate(
    body: ollama.GenerateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_generate(state, model, body, request),
    )


@ollama_router.get("/tags")
async def ollama_tags() -> ollama.TagsResponse:
    return await asyncio.to_thread(list_tags)


@ollama_router.post("/show")
async def ollama_show(body: ollama.ShowRequest, request: Request) -> ollama.ShowResponse:
    state = _state(request)
    with await state.acquire(body.model) as lease:
        return show_model(lease.model)


@ollama_router.delete(
    "/delete",
    response_class=Response,
    responses={
        200: {"description": "Deleted; the body is empty, as Ollama's.", "content": {}},
        **error_responses(409, ollama=True),
    },
)
async def ollama_delete(body: ollama.DeleteRequest, request: Request) -> Response:
    await delete_model(_state(request), body.model)
    return Response()


@ollama_router.post(
    "/copy",
    response_class=Response,
    responses={
        200: {"description": "Copied; the body is empty, as Ollama's.", "content": {}},
        **error_responses(409, ollama=True),
    },
)
async def ollama_copy(body: ollama.CopyRequest, request: Request) -> Response:
    await copy_model(_state(request), body.source, body.destination)
    return Response()


@ollama_router.post(
    "/pull",
    response_model=None,
    responses={**json_or_ndjson(ollama.ProgressResponse), **error_responses(409, 502, ollama=True)},
)
async def ollama_pull(body: ollama.PullRequest, request: Request) -> Response:
    return await serve_pull(_state(request), body, request)


@ollama_router.post("/embed", response_model=None, responses={200: {"model": ollama.EmbedResponse}})
async def ollama_embed(body: ollama.EmbedRequest, request: Request) -> Response:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_embed(state, model, body, request),
    )


@ollama_router.post(
    "/embeddings", response_model=None, responses={200: {"model": ollama.EmbeddingsResponse}}
)
async def ollama_embeddings(body: ollama.EmbeddingsRequest, request: Request) -> Response:
    state = _state(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_embeddings(state, model, body, request),
    )


@ollama_router.get("/version")
async def ollama_version() -> ollama.VersionResponse:
    return ollama.VersionResponse(version=ollama.OLLAMA_API_VERSION, hearth_version=__version__)
