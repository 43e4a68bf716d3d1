"""OpenAI's /v1 routes: the model list (also in Anthropic's shape), chat completions,
completions and embeddings. Each route holds its model (`with_model`) and hands it to serving."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hearth.protocol import anthropic as anthropic_wire
from hearth.protocol.embeddings import EmbeddingList, EmbeddingRequest
from hearth.protocol.openai import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    Model,
    ModelList,
    TextCompletion,
)
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of, with_model
from hearth.server.http.openapi import json_or_event_stream
from hearth.server.openai.chat import serve_chat
from hearth.server.openai.completions import serve_completion
from hearth.server.openai.embeddings import serve_embeddings
from hearth.server.state import ServerState

__all__ = ["router"]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(*_STATUSES)
)


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


@router.get(
    "/models",
    response_model=None,
    responses={200: {"model": ModelList | anthropic_wire.ModelListPage}},
)
async def list_models(request: Request) -> JSONResponse:
    """Every model a request may name, loaded or not (a request loads it on demand). In
    Anthropic's shape when the request carries `anthropic-version`, else OpenAI's."""
    state = state_of(request)
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


@router.get(
    "/models/{model_id:path}",
    response_model=None,
    responses={200: {"model": Model | anthropic_wire.ModelInfo}},
)
async def get_model(model_id: str, request: Request) -> JSONResponse:
    state = state_of(request)
    await state.catalog.known(model_id)
    if _wants_anthropic(request):
        return JSONResponse(_anthropic_card(state, model_id).model_dump(mode="json"))
    card = _model_card(state, model_id)
    card.capabilities = await asyncio.to_thread(state.capabilities, model_id)
    return JSONResponse(card.model_dump(mode="json"))


@router.post(
    "/chat/completions",
    response_model=None,
    responses=json_or_event_stream(ChatCompletion, ChatCompletionChunk),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_chat(state, model, body, request),
    )


@router.post(
    "/completions",
    response_model=None,
    responses=json_or_event_stream(TextCompletion, TextCompletion),
)
async def completions(
    body: CompletionRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_completion(state, model, body, request),
    )


@router.post("/embeddings", response_model=None, responses={200: {"model": EmbeddingList}})
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    state = state_of(request)
    return await with_model(
        state, body.model, None, lambda model: serve_embeddings(state, model, body, request)
    )
