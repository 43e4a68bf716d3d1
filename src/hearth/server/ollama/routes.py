"""Ollama's native API routes under /api: https://github.com/ollama/ollama/blob/main/docs/api.md
Every route needs the API key when keys are set, the store-changing ones included."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hearth import __version__
from hearth.protocol import ollama
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of, with_model
from hearth.server.http.openapi import json_or_ndjson
from hearth.server.ollama.models import (
    blob_exists,
    copy_model,
    delete_model,
    receive_blob,
    serve_create,
    serve_pull,
)
from hearth.server.ollama.serving import (
    list_tags,
    serve_ollama_chat,
    serve_ollama_embed,
    serve_ollama_embeddings,
    serve_ollama_generate,
    show_model,
)

__all__ = ["router"]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

router = APIRouter(
    prefix="/api",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(*_STATUSES, ollama=True),
)


@router.post("/chat", response_model=None, responses=json_or_ndjson(ollama.ChatResponse))
async def ollama_chat(
    body: ollama.ChatRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_chat(state, model, body, request),
    )


@router.post("/generate", response_model=None, responses=json_or_ndjson(ollama.GenerateResponse))
async def ollama_generate(
    body: ollama.GenerateRequest, request: Request
) -> JSONResponse | StreamingResponse:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_generate(state, model, body, request),
    )


@router.get("/tags")
async def ollama_tags() -> ollama.TagsResponse:
    return await asyncio.to_thread(list_tags)


@router.post("/show")
async def ollama_show(body: ollama.ShowRequest, request: Request) -> ollama.ShowResponse:
    state = state_of(request)
    with await state.acquire(body.model) as lease:
        return show_model(lease.model)


@router.delete(
    "/delete",
    response_class=Response,
    responses={
        200: {"description": "Deleted; the body is empty, as Ollama's.", "content": {}},
        **error_responses(409, ollama=True),
    },
)
async def ollama_delete(body: ollama.DeleteRequest, request: Request) -> Response:
    await delete_model(state_of(request), body.model)
    return Response()


@router.post(
    "/copy",
    response_class=Response,
    responses={
        200: {"description": "Copied; the body is empty, as Ollama's.", "content": {}},
        **error_responses(409, ollama=True),
    },
)
async def ollama_copy(body: ollama.CopyRequest, request: Request) -> Response:
    await copy_model(state_of(request), body.source, body.destination)
    return Response()


@router.post(
    "/pull",
    response_model=None,
    responses={**json_or_ndjson(ollama.ProgressResponse), **error_responses(409, 502, ollama=True)},
)
async def ollama_pull(body: ollama.PullRequest, request: Request) -> Response:
    return await serve_pull(state_of(request), body, request)


@router.post("/embed", response_model=None, responses={200: {"model": ollama.EmbedResponse}})
async def ollama_embed(body: ollama.EmbedRequest, request: Request) -> Response:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_embed(state, model, body, request),
    )


@router.post(
    "/embeddings", response_model=None, responses={200: {"model": ollama.EmbeddingsResponse}}
)
async def ollama_embeddings(body: ollama.EmbeddingsRequest, request: Request) -> Response:
    state = state_of(request)
    return await with_model(
        state,
        body.model,
        body.keep_alive,
        lambda model: serve_ollama_embeddings(state, model, body, request),
    )


@router.get("/version")
async def ollama_version() -> ollama.VersionResponse:
    return ollama.VersionResponse(version=ollama.OLLAMA_API_VERSION, hearth_version=__version__)


@router.post(
    "/create",
    response_model=None,
    responses={
        **json_or_ndjson(ollama.ProgressResponse),
        **error_responses(400, 401, 404, 409, 500, ollama=True),
    },
)
async def create_model(body: ollama.CreateRequest, request: Request) -> Response:
    """A new model in the store from an existing one or a GGUF blob, with its own system
    prompt, Jinja template, parameters and license; progress streams as Ollama's does."""
    return await serve_create(state_of(request), body, request)


@router.head(
    "/blobs/{digest}",
    response_class=Response,
    # A 404 when Hearth has not got it; a HEAD reply carries no body, error or not.
    responses={200: {"description": "Hearth has the blob."}, **error_responses(404, ollama=True)},
)
async def has_blob(digest: str) -> Response:
    if await blob_exists(digest):
        return Response(status_code=200)
    return Response(status_code=404, media_type="application/json")  # as documented, less body


@router.post(
    "/blobs/{digest}",
    response_class=Response,
    status_code=201,
    responses={
        201: {"description": "Kept, for a create's `files`.", "content": {}},
        **error_responses(400, 401, 500, ollama=True),
    },
)
async def push_blob(digest: str, request: Request) -> Response:
    await receive_blob(digest, request)
    return Response(status_code=201)
