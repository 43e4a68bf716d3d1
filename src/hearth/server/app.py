"""The app factory. `create_app(settings, state)` builds a FastAPI app whose lifespan starts the
engine thread (loading the model first when no state is given) and keeps everything on
`app.state.hearth`. `hearth serve` loads the state before uvicorn starts, so that a model that
cannot load fails with one clear line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hearth import __version__
from hearth.models import registry
from hearth.models.chat_template import ChatTemplate
from hearth.server.errors import install_error_handlers
from hearth.server.limits import BodySizeLimit
from hearth.server.routes import extensions_router, health_router, openai_router
from hearth.server.state import LoadedModel, ServerState
from hearth.settings import ServeSettings, hearth_home

__all__ = ["create_app", "load_state"]

logger = logging.getLogger(__name__)


def load_state(settings: ServeSettings) -> ServerState:
    """Load the model and build the engine. Blocking: call it off the event loop."""
    from hearth.engine.devices import list_devices
    from hearth.engine.engine import Engine
    from hearth.engine.llama_runner import LlamaRunner, RunnerConfig
    from hearth.engine.types import BatchBudget, QueuePolicy

    model = registry.resolve(settings.model)
    model_path = model.path
    if settings.quantize != "none":
        from hearth.engine.quantize import quantize

        target = hearth_home() / "quantized" / f"{model_path.stem}.{settings.quantize}.gguf"
        model_path = quantize(model_path, settings.quantize, target, settings.threads)
    runner = LlamaRunner(
        RunnerConfig(
            model_path=model_path,
            n_slots=settings.parallel,
            n_ctx_per_slot=settings.ctx_size,
            n_threads=settings.threads,
            n_batch=settings.max_batch_tokens,
            gpu_layers=settings.gpu_layers,
            flash_attn=settings.flash_attn,
        )
    )
    budget = BatchBudget(
        max_batch_tokens=settings.max_batch_tokens,
        max_prefill_tokens=min(settings.max_prefill_tokens, settings.max_batch_tokens),
    )
    info = runner.info
    template = ChatTemplate(info.chat_template, bos_token=info.bos_text, eos_token=info.eos_text)
    if template.is_fallback:
        logger.warning("%s has no chat template; using ChatML", model.id)
    return ServerState(
        settings=settings,
        model=LoadedModel(
            model_id=model.id,
            runner=runner,
            engine=Engine(
                runner,
                settings.parallel,
                budget,
                QueuePolicy(max_waiting=settings.max_queue, timeout_s=settings.queue_timeout),
            ),
            chat_template=template,
        ),
        devices=list_devices(),
    )


def create_app(settings: ServeSettings, state: ServerState | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = state if state is not None else await asyncio.to_thread(load_state, settings)
        loaded.model.engine.start()
        app.state.hearth = loaded
        try:
            yield
        finally:
            await asyncio.to_thread(loaded.model.engine.shutdown)
            await asyncio.to_thread(loaded.model.close_embedder)
            loaded.model.runner.close()

    app = FastAPI(
        title="Hearth",
        version=__version__,
        summary="A local LLM server with the OpenAI API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    app.include_router(extensions_router)
    if settings.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
