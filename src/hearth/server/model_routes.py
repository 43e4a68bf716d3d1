"""Model management routes: `GET /api/ps` (the loaded models, for `hearth ps`), Ollama's
`POST /api/create` with `HEAD`/`POST /api/blobs/:digest` (the GGUF a create starts from), and
explicit `POST /admin/models/load` / `POST /admin/models/unload`. All need the API key when keys
are set."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hearth.models.keep_alive import parse_keep_alive
from hearth.models.manager import ModelStatus
from hearth.protocol import ollama
from hearth.protocol.admin import (
    LoadModelRequest,
    RunningModel,
    RunningModels,
    UnloadModelRequest,
    UnloadModelResponse,
)
from hearth.server.auth import require_api_key
from hearth.server.errors import error_responses
from hearth.server.ollama_models import blob_exists, receive_blob, serve_create
from hearth.server.openapi import json_or_ndjson
from hearth.server.state import LoadedModel, ServerState

__all__ = ["iso_time", "models_router"]

models_router = APIRouter(dependencies=[Depends(require_api_key)])
# /api/ps answers errors in Ollama's shape, like the rest of /api; /admin in OpenAI's.
_ADMIN_ERRORS = error_responses(400, 401, 404, 413, 500, 503)


def iso_time(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.hearth
    return state


def _running(status: ModelStatus[LoadedModel]) -> RunningModel:
    stats = status.model.engine.stats()
    return RunningModel(
        name=status.name,
        model=status.name,
        size=status.size_bytes,
        size_vram=status.model.size_vram,
        expires_at=iso_time(status.expires_at),
        slots_in_use=stats.slots_in_use,
        slots_total=stats.slots_total,
        context_length=status.model.n_ctx_per_slot,
    )


@models_router.get("/api/ps", responses=error_responses(401, 500, ollama=True))
async def running_models(request: Request) -> RunningModels:
    return RunningModels(models=[_running(s) for s in _state(request).models.snapshot()])


@models_router.post(
    "/api/create",
    response_model=None,
    responses={
        **json_or_ndjson(ollama.ProgressResponse),
        **error_responses(400, 401, 404, 409, 500, ollama=True),
    },
)
async def create_model(body: ollama.CreateRequest, request: Request) -> Response:
    """A new model in the store from an existing one or a GGUF blob, with its own system
    prompt, Jinja template, parameters and license; progress streams as Ollama's does."""
    return await serve_create(_state(request), body, request)


@models_router.head(
    "/api/blobs/{digest}",
    response_class=Response,
    # A 404 when Hearth has not got it; a HEAD reply carries no body, error or not.
    responses={200: {"description": "Hearth has the blob."}, **error_responses(404, ollama=True)},
)
async def has_blob(digest: str) -> Response:
    if await blob_exists(digest):
        return Response(status_code=200)
    return Response(status_code=404, media_type="application/json")  # as documented, less body


@models_router.post(
    "/api/blobs/{digest}",
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


@models_router.post("/admin/models/load", responses=_ADMIN_ERRORS)
async def load_model(body: LoadModelRequest, request: Request) -> RunningModel:
    """Load a model now (waiting for room like a request would); it then stays for its
    keep_alive like after a request. Answers with its /api/ps entry."""
    models = _state(request).models
    keep_alive = None if body.keep_alive is None else parse_keep_alive(body.keep_alive)
    return _running(await models.load(body.model, keep_alive))


@models_router.post("/admin/models/unload", responses=_ADMIN_ERRORS)
async def unload_model(body: UnloadModelRequest, request: Request) -> UnloadModelResponse:
    """Unload a model now when idle; a busy one unloads once its requests end."""
    result = await _state(request).models.unload(body.model)
    return UnloadModelResponse(model=body.model, status=result)
