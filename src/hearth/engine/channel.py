"""The messages between the server and a runner process (engine/runner_main.py), pickled over a
socket pair by `multiprocessing.connection.Connection` (length-prefixed frames).

Server to runner: a `RunnerSpec` first, then `GenerationRequest`s, `commands.Abort`,
`commands.AbortAll`, `EmbedRequest`, `EmbedAbort` and finally `commands.Stop`. Runner to server:
`Ready` or `LoadFailed`, then one `Step` per engine step (every request's outputs of that step in
one message, never one per token), `EmbedDone`s, and `Stopped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.engine.speculative import SpeculationMode
from hearth.engine.types import BatchBudget, EngineStats, MediaInput, RequestOutput

if TYPE_CHECKING:
    from hearth.engine.cpu import WeightPlacement
    from hearth.engine.embedder import EmbedderStats
    from hearth.engine.llama_runner import ModelInfo, RunnerConfig
    from hearth.engine.prompt_disk import PromptDiskCache

__all__ = [
    "EmbedAbort",
    "EmbedDone",
    "EmbedRequest",
    "EmbedderReport",
    "LoadFailed",
    "MediaMeasure",
    "MediaMeasured",
    "PromptDiskSpec",
    "Ready",
    "RunnerSpec",
    "Step",
    "StepOutput",
    "Stopped",
]


@dataclass(frozen=True, slots=True)
class PromptDiskSpec:
    """Where the prompt cache on disk lives; the runner opens it once it knows its context."""

    root: Path
    folder: str
    max_bytes: int

    def open(self, n_ctx_per_slot: int) -> PromptDiskCache:
        from hearth.engine.prompt_disk import PromptDiskCache

        return PromptDiskCache(self.root, self.folder, self.max_bytes, n_ctx_per_slot)


@dataclass(frozen=True, slots=True)
class RunnerSpec:
    model_id: str
    config: RunnerConfig
    budget: BatchBudget
    queue_timeout_s: float
    speculation: SpeculationMode
    prompt_disk: PromptDiskSpec | None
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class Ready:
    """The model is loaded: what the server needs of it."""

    info: ModelInfo
    n_ctx_per_slot: int
    weights: WeightPlacement
    n_embd: int
    max_embed_tokens: int
    pooling: str
    vision: bool  # a projector that takes images


@dataclass(frozen=True, slots=True)
class LoadFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class StepOutput:
    request_id: str
    admitted_at: float | None  # perf_counter: CLOCK_MONOTONIC, the same in both processes
    output: RequestOutput


@dataclass(frozen=True, slots=True)
class Step:
    outputs: list[StepOutput]
    seconds: float  # how long the step took: the watchdog's measure
    stats: EngineStats | None  # the engine's counters, every so often
    fault: str | None  # EngineCore.fault


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    request_id: str
    inputs: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class EmbedAbort:
    request_id: str


@dataclass(frozen=True, slots=True)
class EmbedDone:
    request_id: str
    vectors: list[list[float]] | None
    error: BaseException | None
    stats: EmbedderStats


@dataclass(frozen=True, slots=True)
class EmbedderReport:
    """The embedder's counters, when they changed (an abort settles no request)."""

    stats: EmbedderStats


@dataclass(frozen=True, slots=True)
class MediaMeasure:
    """How many positions each image takes (commands.MeasureMedia, across the channel)."""

    request_id: str
    media: tuple[MediaInput, ...]


@dataclass(frozen=True, slots=True)
class MediaMeasured:
    request_id: str
    counts: list[int | str]


@dataclass(frozen=True, slots=True)
class Stopped:
    """The runner ended every request and saved its prompt cache; it exits next."""
