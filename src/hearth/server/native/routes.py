"""Hearth's own routes: HEAD / and /health, /metrics, and the /tokenize and /detokenize
extensions."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hearth.engine.types import EngineStats, RunnerHealth
from hearth.protocol.extensions import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from hearth.server.core.prepare import check_token_ids
from hearth.server.http.auth import require_api_key
from hearth.server.http.errors import error_responses
from hearth.server.http.leases import state_of
from hearth.server.http.metrics import CONTENT_TYPE, ModelMetrics, render_metrics
from hearth.server.native.model_routes import iso_time

__all__ = ["extensions_router", "health_router"]

_STATUSES = (400, 401, 404, 413, 429, 500, 503)

health_router = APIRouter()
extensions_router = APIRouter(
    dependencies=[Depends(require_api_key)], responses=error_responses(*_STATUSES)
)


def _engine_fields(stats: EngineStats) -> dict[str, Any]:
    return {
        "steps": stats.steps,
        "max_batch_tokens_seen": stats.max_batch_tokens_seen,
        "prompt_tokens_total": stats.prompt_tokens_total,
        "prompt_tokens_cached_total": stats.prompt_tokens_cached_total,
        "prompt_tokens_decoded_total": stats.prompt_tokens_decoded_total,
        "generated_tokens_total": stats.generated_tokens_total,
        "draft_tokens_total": stats.draft_tokens_total,
        "media_encoded_total": stats.media_encoded_total,
        "media_tokens_total": stats.media_tokens_total,
        "draft_tokens_accepted_total": stats.draft_tokens_accepted_total,
        "requests_finished": stats.requests_finished,
        "step_ms_by_rows": {
            str(rows): round(seconds * 1000, 3)
            for rows, seconds in sorted(stats.step_seconds_by_rows.items())
        },
        "batch_size_histogram": {str(k): v for k, v in stats.batch_size_histogram.items()},
    }


def _runner_fields(runner: RunnerHealth) -> dict[str, Any]:
    return {
        "pid": runner.pid,
        "restarts": runner.restarts,
        "crashes": runner.crashes,
        "last_crash": runner.last_crash,
        "last_crash_at": iso_time(runner.last_crash_at),
        "watchdog_s": round(runner.watchdog_s, 1),
    }


@health_router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """The top-level fields describe the startup model (--model); `models` has one entry per
    model loaded or loading, and `loading` names those still loading. `status` is "draining"
    while the server stops (still a 200); a model whose engine failed is "failed", with its
    `error`, until the next request for it loads it again."""
    state = state_of(request)
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
        fault = status.model.failed
        runner = status.model.runner_health()
        per_model.append(
            {
                "name": status.name,
                "state": "failed" if fault is not None else "loaded",
                **({"error": fault} if fault is not None else {}),
                "runner": _runner_fields(runner) if runner is not None else None,
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
    state = state_of(request)
    if not state.settings.metrics_public:
        await require_api_key(request)
    models = []
    for status in state.models.snapshot():
        engine = status.model.engine
        runner = engine.health()
        crashes = runner.crashes if runner is not None else 0
        models.append(ModelMetrics(status.name, engine.stats(), engine.request_stats(), crashes))
    text = render_metrics(
        models,
        loading=len(state.models.loading()),
        http=getattr(request.app.state, "http_counts", None),
    )
    return Response(text, media_type=CONTENT_TYPE)


@extensions_router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    state = state_of(request)
    with await state.acquire(body.model or state.model_id) as lease:
        runner = lease.model.runner
        tokens = await asyncio.to_thread(
            runner.tokenize, body.content, add_special=body.add_special, parse_special=True
        )
    return TokenizeResponse(tokens=tokens)


@extensions_router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    state = state_of(request)
    with await state.acquire(body.model or state.model_id) as lease:
        check_token_ids(lease.model, body.tokens, param="tokens")
        content = lease.model.runner.detokenize(body.tokens)
    return DetokenizeResponse(content=content)
