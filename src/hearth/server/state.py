"""Everything a request needs, built once at start and kept on `app.state.hearth`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hearth.errors import HearthError
from hearth.models import registry
from hearth.models.chat_template import ChatTemplate
from hearth.models.gguf_info import read_gguf_info
from hearth.models.manager import Lease, ModelManager
from hearth.models.presets import Preset
from hearth.server.catalog import ServerCatalog
from hearth.server.http.drain import Drain
from hearth.settings import ServeSettings

if TYPE_CHECKING:
    from hearth.engine.cpu import CpuReport, WeightPlacement
    from hearth.engine.devices import Device
    from hearth.engine.embedder import Embedder
    from hearth.engine.engine import Engine
    from hearth.engine.llama_runner import ModelInfo
    from hearth.engine.runner_process import ProcessEngine, RemoteEmbedder
    from hearth.engine.types import Grammar, RunnerHealth

__all__ = ["BackgroundJob", "Closeable", "LoadedModel", "ModelView", "ServerState"]


class ModelView(Protocol):
    """What a request needs of a loaded model in the server process: its vocabulary and the
    facts its load reported. `LlamaRunner` (--runner inline), or `RemoteRunner`, whose weights
    live in a runner process."""

    @property
    def info(self) -> ModelInfo: ...
    @property
    def n_ctx_per_slot(self) -> int: ...
    @property
    def n_slots(self) -> int: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def weights(self) -> WeightPlacement | None: ...
    @property
    def vision(self) -> bool:
        """It has a projector that takes images."""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def check_grammar(self, grammar: Grammar) -> bool: ...
    def close(self) -> None: ...


class BackgroundJob(Protocol):
    """Work that outlives its request and that a server stop must end (Ollama's pulls)."""

    def abort(self, error: HearthError) -> None: ...


class Closeable(Protocol):
    """An API's own resource that the server closes when it stops (the Responses store)."""

    def close(self) -> None: ...


@dataclass(slots=True)
class LoadedModel:
    """One model in memory: its llama context, the engine thread that owns it, its template,
    and the preset it was loaded for (an alias), if any."""

    model_id: str
    runner: ModelView
    engine: Engine | ProcessEngine
    chat_template: ChatTemplate
    preset: Preset | None = None
    size_bytes: int = 0  # weights and KV cache, estimated from the GGUF (models/footprint.py)
    size_vram: int = 0  # the part of it offloaded to a GPU
    created: int = field(default_factory=lambda: int(time.time()))
    # Its own llama context, created by the first embeddings request (server/core/embeddings.py).
    embedder: Embedder | RemoteEmbedder | None = None
    # Which buffer types hold its weights, and why (--repack; engine/cpu.py).
    weights: WeightPlacement | None = None

    @property
    def model_info(self) -> ModelInfo:
        return self.runner.info

    @property
    def n_ctx_per_slot(self) -> int:
        return self.runner.n_ctx_per_slot

    # -- ServedModel, for the model manager ----------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    @property
    def fault(self) -> str | None:
        """Why the engine failed (an exception in its thread), if it did: /health reports the
        model as failed, and the manager reloads it once nothing holds it."""
        # EngineCore records it; Engine has no public accessor for it yet.
        return self.engine.fault

    @property
    def failed(self) -> str | None:
        """Why the model is marked failed after repeated crashes of its runner, until it is
        loaded again explicitly (ProcessEngine.revive); a fault says why its engine failed."""
        return self.engine.failed or self.engine.fault

    def runner_health(self) -> RunnerHealth | None:
        """Its runner process (pid, restarts, last crash); None when it runs in the server."""
        return self.engine.health()

    async def revive(self) -> None:
        """Start a runner again for a model marked failed by a crash loop (an explicit load)."""
        await self.engine.revive()

    def start(self) -> None:
        self.engine.start()

    def close(self) -> None:
        self.engine.shutdown()
        self.close_embedder()  # it borrows the runner's model
        self.runner.close()

    def close_embedder(self) -> None:
        """Free the embedding context; before the runner closes, whose model it borrows."""
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None


@dataclass(slots=True)
class ServerState:
    settings: ServeSettings
    catalog: ServerCatalog[LoadedModel]
    models: ModelManager[LoadedModel]
    devices: list[Device]
    cpu: CpuReport | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    # Downloads running for POST /api/pull (hearth.server.ollama.models).
    pulls: set[BackgroundJob] = field(default_factory=set)
    # /v1/responses' stored responses, opened on first use (hearth.server.responses.serving).
    responses: Closeable | None = None
    responses_expired_at: float = 0.0
    # The graceful stop: whether new requests are refused, and how many still run.
    drain: Drain = field(default_factory=Drain)

    @property
    def model_id(self) -> str:
        """The startup model (--model): /health's top-level fields describe it."""
        return self.catalog.default_name

    @property
    def model(self) -> LoadedModel | None:
        """The startup model, when loaded."""
        return self.models.get(self.model_id)

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease[LoadedModel]:
        """Hold the model `name` for a request, loading it if needed; release the lease once
        the response is fully sent (`server/http/leases.py` does it for the routes)."""
        return await self.models.acquire(await self.catalog.known(name), keep_alive)

    def capabilities(self, name: str) -> list[str]:
        """What the model can do, from its chat template: the loaded one, else its GGUF header
        (blocking: call in a thread)."""
        loaded = self.models.get(name)
        vision = False
        if loaded is not None:
            template = loaded.chat_template
            vision = loaded.runner.vision
        else:
            source = self.catalog.spec(name).source or registry.DEFAULT_MODEL_ID
            is_file = source.lower().endswith(".gguf")
            entry = None if is_file else registry.find(source)
            path = Path(source).expanduser() if entry is None else entry.header_path
            info = read_gguf_info(path, require_complete=False)
            template = ChatTemplate(info.chat_template, architecture=info.architecture)
            # --mmproj gives the startup model (and the aliases over it) a projector; the store
            # keeps one beside a model pulled with it.
            vision = self.settings.mmproj is not None and source == self.settings.model
            vision = vision or (entry is not None and entry.mmproj_path is not None)
        capabilities = ["completion", "tools"]
        if template.reasoning is not None:
            capabilities.append("thinking")
        if vision:
            capabilities.append("vision")
        return capabilities

    def end_requests(self, error: HearthError) -> None:
        """End every request on every loaded model, and every pull, with `error` (the server
        is stopping)."""
        for status in self.models.snapshot():
            status.model.engine.abort_all(error)
            if status.model.embedder is not None:
                status.model.embedder.abort_all(error)
        for job in list(self.pulls):
            job.abort(error)
