"""Model management routes: `GET /api/ps` (the loaded models, for `hearth ps`) and explicit
`POST /admin/models/load` / `POST /admin/models/unload`. All need the API key when keys are set.
(Ollama's `/api/create` and `/api/blobs` are in `server/ollama/routes.py`.)"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request

from hearth.keep_alive import parse_keep_alive
from hearth.models.manager import ModelStatus
from hearth.protocol.admin import (
    LoadModelRequest,
    RunningModel,
    RunningModels,
    UnloadModelRequest,
    UnloadModelResponse,
)
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of
from hearth.server.state import LoadedModel

__all__ = ["iso_time", "models_router"]

models_router = APIRouter(dependencies=[Depends(require_api_key)])
# /api/ps answers errors in Ollama's shape, like the rest of /api; /admin in OpenAI's.
_ADMIN_ERRORS = error_responses(400, 401, 404, 413, 500, 503)


def iso_time(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def _running(status: ModelStatus[LoadedModel]) -> RunningModel:
    stats = status.model.engine.stats()
    runner = status.model.runner_health()
    return RunningModel(
        name=status.name,
        model=status.name,
        size=status.size_bytes,
        size_vram=status.model.size_vram,
        expires_at=iso_time(status.expires_at),
        slots_in_use=stats.slots_in_use,
        slots_total=stats.slots_total,
        context_length=status.model.n_ctx_per_slot,
        runner_pid=runner.pid if runner is not None else None,
        restarts=runner.restarts if runner is not None else 0,
        last_crash=runner.last_crash if runner is not None else None,
        failed=status.model.failed,
    )


@models_router.get("/api/ps", responses=error_responses(401, 500, ollama=True))
async def running_models(request: Request) -> RunningModels:
    return RunningModels(models=[_running(s) for s in state_of(request).models.snapshot()])


@models_router.post("/admin/models/load", responses=_ADMIN_ERRORS)
async def load_model(body: LoadModelRequest, request: Request) -> RunningModel:
    """Load a model now (waiting for room like a request would); it then stays for its
    keep_alive like after a request. Answers with its /api/ps entry."""
    models = state_of(request).models
    keep_alive = None if body.keep_alive is None else parse_keep_alive(body.keep_alive)
    status = await models.load(body.model, keep_alive)
    await status.model.revive()  # a model failed by a crash loop gets its runner again
    return _running(status)


@models_router.post("/admin/models/unload", responses=_ADMIN_ERRORS)
async def unload_model(body: UnloadModelRequest, request: Request) -> UnloadModelResponse:
    """Unload a model now when idle; a busy one unloads once its requests end."""
    result = await state_of(request).models.unload(body.model)
    return UnloadModelResponse(model=body.model, status=result)
