"""The app factory. `create_app(settings, state)` builds a FastAPI app whose lifespan starts the
model manager (loading the startup model first when no state is given) and keeps everything on
`app.state.hearth`. `hearth serve` loads the state before uvicorn starts, so that a model that
cannot load, or a bad presets file, fails with one clear line. `load_model` is the loader the
manager calls (in a thread) for every model loaded on demand."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hearth import __version__
from hearth.errors import ModelLoadError
from hearth.models import registry
from hearth.models.chat_template import FALLBACK_TEMPLATE, ChatTemplate
from hearth.models.footprint import kv_cache_scale, model_shape
from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.models.manager import ManagerLimits, ModelManager
from hearth.models.presets import PRESETS_FILE_NAME, Preset, load_presets
from hearth.server.anthropic.routes import router as anthropic_router
from hearth.server.catalog import ModelSpec, ServerCatalog
from hearth.server.http.drain import DrainGate
from hearth.server.http.errors import drop_validation_responses, install_error_handlers
from hearth.server.http.hosts import HostCheck, is_loopback_host
from hearth.server.http.journal import Journal, JournalMiddleware
from hearth.server.http.json_bodies import JsonBodies
from hearth.server.http.limits import BodySizeLimit
from hearth.server.http.metrics import CountRequests, HttpCounts
from hearth.server.http.origins import OriginCheck
from hearth.server.http.surrogates import LoneSurrogateCheck
from hearth.server.native.model_routes import models_router
from hearth.server.native.routes import extensions_router, health_router
from hearth.server.native.web import web_router
from hearth.server.ollama.routes import router as ollama_router
from hearth.server.openai.routes import router as openai_router
from hearth.server.responses.routes import router as responses_router
from hearth.server.state import LoadedModel, ModelView, ServerState
from hearth.settings import ServeSettings, hearth_home

if TYPE_CHECKING:
    from hearth.engine.channel import PromptDiskSpec
    from hearth.engine.devices import Device
    from hearth.engine.engine import Engine
    from hearth.engine.runner_process import ProcessEngine

__all__ = ["create_app", "load_model", "load_state", "presets_path"]

logger = logging.getLogger(__name__)


def presets_path(settings: ServeSettings) -> Path:
    return settings.config or hearth_home() / PRESETS_FILE_NAME


def load_model(settings: ServeSettings, devices: list[Device], spec: ModelSpec) -> LoadedModel:
    """Load one model and build its engine (not started): in a runner process of its own
    (--runner process), else in this process. Blocking: call it off the event loop."""
    from hearth.engine.llama_runner import RunnerConfig
    from hearth.engine.speculative import SpeculationMode
    from hearth.engine.types import BatchBudget, QueuePolicy

    model = registry.resolve(spec.source)
    model_path = model.path
    assert spec.ctx_size is not None, "the catalog resolves the context before a load"
    _check_model_file(spec.name, model_path)
    if settings.quantize != "none":
        from hearth.engine.quantize import quantize

        target = hearth_home() / "quantized" / f"{model_path.stem}.{settings.quantize}.gguf"
        model_path = quantize(model_path, settings.quantize, target, settings.threads)
    weight_types = read_gguf_info(model_path, require_complete=False).tensor_types
    config = RunnerConfig(
        model_path=model_path,
        n_slots=spec.parallel,
        n_ctx_per_slot=spec.ctx_size,
        n_threads=settings.threads,
        n_batch=settings.max_batch_tokens,
        gpu_layers=settings.gpu_layers,
        flash_attn=settings.flash_attn,
        type_k=settings.cache_type_k,
        type_v=settings.cache_type_v,
        kv_unified=settings.kv_unified,
        repack=settings.repack,
        weight_types=weight_types,
        n_prefill=min(settings.max_prefill_tokens, settings.max_batch_tokens),
        mmproj_path=_mmproj(settings, spec, model),
    )
    budget = BatchBudget(
        max_batch_tokens=settings.max_batch_tokens,
        max_prefill_tokens=min(settings.max_prefill_tokens, settings.max_batch_tokens),
    )
    policy = QueuePolicy(max_waiting=settings.max_queue, timeout_s=settings.queue_timeout)
    speculation = SpeculationMode(settings.speculation)
    runner: ModelView
    engine: Engine | ProcessEngine
    if settings.runner == "process":
        from hearth.engine.channel import RunnerSpec
        from hearth.engine.runner_process import ProcessEngine, RemoteRunner
        from hearth.engine.vocab import Vocabulary

        engine = ProcessEngine(
            RunnerSpec(
                model_id=spec.name,
                config=config,
                budget=budget,
                queue_timeout_s=policy.timeout_s,
                speculation=speculation,
                prompt_disk=_prompt_disk(settings, model_path),
                log_level=settings.log_level,
            ),
            capacity=spec.parallel + policy.max_waiting,
            watchdog_floor_s=settings.runner_watchdog,
        )
        engine.load()
        try:
            runner = RemoteRunner(Vocabulary.load(model_path), engine)
        except BaseException:
            engine.shutdown()
            raise
    else:
        from hearth.engine.engine import Engine
        from hearth.engine.llama_runner import LlamaRunner

        local = LlamaRunner(config)
        disk = _prompt_disk(settings, model_path)
        runner = local
        engine = Engine(
            local,
            spec.parallel,
            budget,
            policy,
            prompt_disk=disk.open(local.n_ctx_per_slot) if disk is not None else None,
            speculation=speculation,
        )
    info = runner.info
    architecture = info.description.split()[0] if info.description else ""
    template = ChatTemplate(
        # A preset's or the model's own (/api/create) Jinja template replaces the GGUF's.
        spec.preset.template if spec.preset and spec.preset.template else info.chat_template,
        bos_token=info.bos_text,
        eos_token=info.eos_text,
        architecture=architecture,
    )
    if template.is_fallback:
        logger.warning(
            "%s has no chat template; using %s's",
            spec.name,
            architecture if template.source != FALLBACK_TEMPLATE else "ChatML",
        )
    shape = model_shape(model_path)
    kv_bytes = shape.kv_bytes_per_token * spec.ctx_size * spec.parallel  # in f16
    kv_bytes = int(kv_bytes * kv_cache_scale(settings.cache_type_k, settings.cache_type_v))
    size = model_path.stat().st_size + kv_bytes
    return LoadedModel(
        model_id=spec.name,
        runner=runner,
        engine=engine,
        chat_template=template,
        preset=spec.preset,
        size_bytes=size,
        size_vram=_offloaded_bytes(settings, devices, size, shape.layers),
        weights=runner.weights,
    )


def _prompt_disk(settings: ServeSettings, model_path: Path) -> PromptDiskSpec | None:
    """Where this model's prompt cache on disk lives, for this KV configuration; None when
    off. The engine opens it once it knows the context per slot."""
    if settings.prompt_cache_disk <= 0:
        return None
    from hearth.engine.channel import PromptDiskSpec
    from hearth.engine.prompt_disk import PROMPT_CACHE_DIR, cache_folder_name, model_fingerprint

    folder = cache_folder_name(
        model_fingerprint(model_path),
        settings.cache_type_k,
        settings.cache_type_v,
        settings.flash_attn,
    )
    return PromptDiskSpec(hearth_home() / PROMPT_CACHE_DIR, folder, int(settings.prompt_cache_disk))


def _mmproj(settings: ServeSettings, spec: ModelSpec, model: registry.ModelRef) -> Path | None:
    """The projector of the startup model (--mmproj), for it and the aliases over it; else the
    one the store keeps beside the model."""
    if settings.mmproj is None or spec.source != settings.model:
        return model.mmproj_path
    return settings.mmproj.expanduser()


def _check_model_file(name: str, path: Path) -> None:
    """A file that is not a whole GGUF (truncated, or something else) is refused by name before
    llama.cpp reads it, whose own error says only that it could not."""
    try:
        read_gguf_info(path)
    except NotAGGUFError as exc:
        reason = str(exc)
        if str(path) not in reason:
            reason = f"{path}: {reason}"
        raise ModelLoadError(
            f"The model `{name}` cannot be loaded: {reason}. Pull or copy it again."
        ) from exc


def _offloaded_bytes(settings: ServeSettings, devices: list[Device], size: int, layers: int) -> int:
    if not any(d.type in ("gpu", "igpu") for d in devices) or settings.gpu_layers == 0:
        return 0
    if settings.gpu_layers < 0 or layers <= 0:
        return size
    return size * min(settings.gpu_layers, layers) // layers


def load_state(settings: ServeSettings, presets: dict[str, Preset] | None = None) -> ServerState:
    """Read the presets, load the startup model (--model) and build the model manager.
    Blocking: call it off the event loop. Raises PresetError, UnknownModelError, RuntimeError."""
    from hearth.engine.buffer_types import cpu_report
    from hearth.engine.devices import list_devices

    path = presets_path(settings)
    if presets is None:
        presets = load_presets(path, required=settings.config is not None)
    if presets:
        logger.info("Presets from %s: %s", path, ", ".join(presets))
    devices = list_devices()
    catalog = ServerCatalog(
        settings,
        presets,
        functools.partial(load_model, settings, devices),
        presets_source=str(path),
    )
    manager: ModelManager[LoadedModel] = ModelManager(
        catalog,
        ManagerLimits(
            max_loaded=settings.max_loaded_models,
            max_memory=settings.max_memory,
            wait_timeout_s=settings.queue_timeout,
        ),
    )
    startup = catalog.default_name
    if settings.max_memory is not None:
        needed = catalog.estimate_bytes(startup)
        if needed > settings.max_memory:
            raise RuntimeError(
                f"{startup} needs about {needed >> 20} MiB, more than --max-memory "
                f"({settings.max_memory >> 20} MiB)"
            )
    manager.adopt(startup, catalog.load(startup), catalog.default_keep_alive(startup))
    return ServerState(
        settings=settings, catalog=catalog, models=manager, devices=devices, cpu=cpu_report()
    )


class _HearthAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = drop_validation_responses(super().openapi())
        return self.openapi_schema


def create_app(settings: ServeSettings, state: ServerState | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = state if state is not None else await asyncio.to_thread(load_state, settings)
        # What killed pulls, imports and copies left in the store's .partial folder.
        await asyncio.to_thread(lambda: registry.store().clean_staging())
        loaded.models.start()
        watcher = asyncio.create_task(loaded.catalog.watch_index(), name="hearth-model-index")
        app.state.hearth = loaded
        try:
            yield
        finally:
            watcher.cancel()
            await loaded.models.close()
            if loaded.responses is not None:
                loaded.responses.close()
            journal: Journal | None = getattr(app.state, "journal", None)
            if journal is not None:
                journal.close()

    app = _HearthAPI(
        title="Hearth",
        version=__version__,
        summary="A local LLM server with the OpenAI API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    app.include_router(responses_router)
    app.include_router(anthropic_router)
    app.include_router(extensions_router)
    app.include_router(ollama_router)
    app.include_router(models_router)
    if not settings.no_ui:
        app.include_router(web_router())
    # Innermost: its 503 while the server drains still gets CORS headers.
    app.add_middleware(DrainGate)
    # Any body is read as JSON (curl's form label, text/plain, none): inside OriginCheck.
    app.add_middleware(JsonBodies)
    # Inside the body limit, which bounds what it reads whole.
    app.add_middleware(LoneSurrogateCheck)
    if settings.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outside the body limit: a foreign page's write is refused before its body is read.
    app.add_middleware(OriginCheck, allowed=settings.cors_origin)
    if settings.journal is not None:  # outside the body limit: a refused body is journaled
        journal = Journal(
            settings.journal.expanduser(),
            bodies=settings.journal_bodies,
            max_bytes=settings.journal_max_bytes,
        )
        app.add_middleware(JournalMiddleware, journal=journal)
        app.state.journal = journal  # closed by the lifespan, after the last request
    if is_loopback_host(settings.host):  # outside the rest: a foreign Host reaches nothing
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.state.http_counts = http_counts = HttpCounts()  # outermost: counts every answer
    app.add_middleware(CountRequests, counts=http_counts)
    return app
