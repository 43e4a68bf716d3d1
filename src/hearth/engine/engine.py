"""The engine's two halves: the step loop, one thread that owns the model, and the async face
that asyncio talks to by queues.

`StepLoop` (the engine thread): drains its inbox, runs `EngineCore.step()`, and hands each
step's outputs to its `on_step`, in this process (`Engine`) or in a runner process
(engine/runner_main.py, which writes them to its channel). llama_decode releases the GIL, so
HTTP keeps flowing while a step computes.

`AsyncEngine.generate()` (the event loop): submits an `Add` and awaits a per-request
asyncio.Queue. `Engine` puts it into its own StepLoop's inbox and gets each step's outputs back
with one `call_soon_threadsafe`; `runner_process.ProcessEngine` writes it to a runner process.
Either way the event loop never waits on the engine thread.

`RequestStats` are measured on the request side, in `generate()`: time to first output, time per
output token, end-to-end latency and queue wait (submission to the step that admitted the
request into a slot, noted by the engine thread on the request's sink), and how each choice
ended. A request costs one comparison per output and a few clock reads and histogram adds in
all; /metrics renders them when scraped (`hearth.server.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import threading
import time
from bisect import bisect_left
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from hearth.engine.commands import Abort, AbortAll, MeasureMedia, Stop
from hearth.engine.core import EngineCore, ModelRunner
from hearth.engine.prompt_disk import PromptDiskCache
from hearth.engine.scheduler import Sequence
from hearth.engine.speculative import SpeculationMode
from hearth.engine.types import (
    BatchBudget,
    EngineStats,
    FinishReason,
    GenerationRequest,
    MediaInput,
    QueuePolicy,
    RequestOutput,
    RunnerHealth,
)
from hearth.errors import (
    EngineError,
    HearthError,
    ServerOverloadedError,
    ServerShuttingDownError,
)

__all__ = [
    "E2E_BUCKETS",
    "TPOT_BUCKETS",
    "TTFT_BUCKETS",
    "Add",
    "AsyncEngine",
    "Engine",
    "Histogram",
    "RequestStats",
    "StepLoop",
]

logger = logging.getLogger(__name__)

# Bucket bounds (seconds). vLLM's (vllm/v1/metrics/loggers.py), so its dashboards read these the
# same, with finer ones below for a local server's small models and short queues.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0
)  # fmt: skip
TPOT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0
)  # fmt: skip
E2E_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """A Prometheus-style histogram as plain numbers: `counts[i]` observations fell at or below
    `bounds[i]` and above the bound before it; the last count is above every bound."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass(slots=True)
class RequestStats:
    """What `Engine.generate` measured of the requests it served (on the event loop)."""

    time_to_first_token: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    time_per_output_token: Histogram = field(default_factory=lambda: Histogram(TPOT_BUCKETS))
    e2e_latency: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    # Choices ended, by reason: stop, length, or abort (the client left, or the turn ended
    # early); every reason is present from the start, so each series exists from the start.
    finished: dict[str, int] = field(
        default_factory=lambda: {
            FinishReason.STOP.value: 0,
            FinishReason.LENGTH.value: 0,
            FinishReason.ABORT.value: 0,
        }
    )
    failed: int = 0  # requests the engine failed: queue timeout, llama_decode, shutdown

    def copy(self) -> RequestStats:
        return RequestStats(
            self.time_to_first_token.copy(),
            self.time_per_output_token.copy(),
            self.e2e_latency.copy(),
            self.queue_time.copy(),
            dict(self.finished),
            self.failed,
        )


class _Sink(asyncio.Queue[RequestOutput]):
    """A request's outputs, and when the engine thread admitted it into a slot (perf_counter)."""

    admitted_at: float | None = None


class AdmittedSink(Protocol):
    """Where a request's outputs go; the step loop notes when it entered a slot."""

    admitted_at: float | None


SinkT = TypeVar("SinkT", bound=AdmittedSink)


@dataclass(frozen=True, slots=True)
class Add(Generic[SinkT]):
    request: GenerationRequest
    sink: SinkT


Command = Add[Any] | Abort | AbortAll | MeasureMedia | Stop
# What a step produced, and how long it took (seconds); called after every step, even one with
# no outputs (a prefill), and once more with the shutdown's.
StepHandler = Callable[[list[tuple[SinkT, RequestOutput]], float], None]


class StepLoop(Generic[SinkT]):
    """The engine thread: it takes commands from its inbox, runs `EngineCore` steps, and hands
    each step's outputs to `on_step`. The in-process `Engine` hands them to the event loop; a
    runner process (engine/runner_main.py) writes them to its channel."""

    def __init__(self, core: EngineCore[SinkT], on_step: StepHandler[SinkT]) -> None:
        self.core = core
        self._on_step = on_step
        self.inbox: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.running = False
        # Requests not yet admitted into a slot, with their first sequence: the thread's.
        self._queued: dict[SinkT, Sequence] = {}
        self._saving = False  # the thread is writing the prompt cache (at its stop)

    def start(self) -> None:
        self.running = True
        self._thread = threading.Thread(target=self._run, name="hearth-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self.inbox.put(Stop())
        self._thread.join(timeout)
        if self._thread.is_alive() and self._saving:
            # Writing the prompt cache to disk ends by itself; the caller frees the context next.
            self._thread.join()
        self._thread = None

    def stats(self) -> EngineStats:
        # Read from another thread: a copy of plain ints, consistent enough for a gauge (the
        # histogram copied in one C call, so a size the engine thread adds meanwhile is harmless).
        stats = copy.copy(self.core.stats)
        stats.batch_size_histogram = dict(stats.batch_size_histogram)
        stats.step_seconds_by_rows = dict(stats.step_seconds_by_rows)
        return stats

    def _run(self) -> None:
        core, inbox = self.core, self.inbox
        while True:
            # Idle: block until a command comes. Busy: take whatever arrived since the last step
            # (this thread is the only reader, so a queue that is not empty has a command).
            if core.has_work:
                command = None if inbox.empty() else inbox.get_nowait()
            else:
                command = inbox.get()
            stop = False
            outputs: list[tuple[SinkT, RequestOutput]] = []
            while command is not None:
                if isinstance(command, Stop):
                    stop = True
                elif isinstance(command, Add):
                    try:
                        core.add(command.request, command.sink)
                    except Exception as exc:  # never leave its caller waiting
                        logger.exception("engine could not take request %s", command.request)
                        outputs.append((command.sink, _failed(exc)))
                    else:
                        waiting = core.scheduler.waiting
                        if waiting and waiting[-1].request_id == command.request.request_id:
                            self._queued[command.sink] = waiting[-1]
                elif isinstance(command, AbortAll):
                    outputs.extend(core.abort_all(command.error))
                elif isinstance(command, MeasureMedia):
                    self._measure(command)
                else:
                    outputs.extend(core.abort(command.request_id))
                command = None if inbox.empty() else inbox.get_nowait()
            if stop:
                outputs.extend(
                    core.abort_all(ServerShuttingDownError("The server is shutting down."))
                )
                self.running = False
                self._on_step(outputs, 0.0)
                self._save_prompt_cache()
                return
            step_at = time.perf_counter()
            outputs.extend(core.step())  # never raises: a fault fails its requests (core.fault)
            if self._queued:
                self._note_admissions(step_at, outputs)
            self._on_step(outputs, time.perf_counter() - step_at)

    def _measure(self, command: MeasureMedia) -> None:
        try:
            counts = [self.core.runner.media_tokens(item) for item in command.media]
        except Exception as exc:  # never leave its caller waiting
            logger.exception("engine could not measure images")
            counts = [f"{type(exc).__name__}: {exc}"] * len(command.media)
        command.reply(counts)

    def _save_prompt_cache(self) -> None:
        # On the engine thread, which owns the context, once nothing runs: unload and stop.
        started = time.perf_counter()
        self._saving = True
        try:
            saved = self.core.save_prompt_cache()
        except Exception:
            logger.exception("Saving the prompt cache failed")
            return
        finally:
            self._saving = False
        if saved:
            logger.info(
                "Saved the KV caches of %d slots to disk in %.2fs",
                saved,
                time.perf_counter() - started,
            )

    def _note_admissions(self, step_at: float, outputs: list[tuple[SinkT, RequestOutput]]) -> None:
        """Stamp the requests this step admitted into a slot with the step's start; forget those
        that ended without one (aborted, expired, failed)."""
        queued = self._queued
        for sink, sequence in list(queued.items()):
            if sequence.slot is not None:
                sink.admitted_at = step_at
                del queued[sink]
        for sink, output in outputs:
            if queued.pop(sink, None) is not None and output.finish_reason not in _NOT_RUN:
                sink.admitted_at = step_at  # admitted and already finished, in this one step


class AsyncEngine:
    """The event loop's face of an engine, in this process (`Engine`) or in a runner process
    (`runner_process.ProcessEngine`): `generate()` streams a request's outputs and measures it.
    A subclass says how a command reaches the step loop (`_submit`)."""

    def __init__(self, capacity: int) -> None:
        # Requests between generate() and their end, counted on the event loop: a bound that
        # holds exactly, with no round trip to the engine thread.
        self._capacity = capacity
        self._in_flight = 0
        self._requests = RequestStats()  # the event loop's

    def _submit(self, command: Add[_Sink] | Abort) -> None:
        raise NotImplementedError

    async def media_tokens(self, media: list[MediaInput]) -> list[int | str]:
        """The positions each image takes in a prompt, or why llama.cpp could not read it."""
        raise NotImplementedError

    def _check_running(self) -> None:
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        """Requests between generate() and their end: running, or queued for a slot."""
        return self._in_flight

    def request_stats(self) -> RequestStats:
        """A copy of what generate() measured (call it on the event loop)."""
        return self._requests.copy()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Stream a request's outputs, its choices interleaved; it ends when every choice has.
        Leaving the iterator early aborts the request."""
        self._check_running()
        if self._in_flight >= self._capacity:
            raise ServerOverloadedError(
                f"The server is overloaded: {self._in_flight} requests are running or waiting. "
                "Retry later.",
                headers={"Retry-After": "1"},
            )
        sink = _Sink()
        self._in_flight += 1
        counted = True  # in _in_flight
        submitted = time.perf_counter()
        self._submit(Add(request, sink))
        unfinished = request.n
        finished = failed = False
        first_at = ended_at = 0.0
        tokens = 0  # the longest choice's
        stats = self._requests
        try:
            while True:
                output = await sink.get()
                reason = output.finish_reason
                if reason is FinishReason.ERROR:
                    finished = failed = True
                    raise output.error or EngineError("the engine failed this request")
                if not first_at:
                    first_at = time.perf_counter()
                if reason is not None:
                    unfinished -= 1
                    finished = unfinished == 0
                    stats.finished[reason.value] = stats.finished.get(reason.value, 0) + 1
                    tokens = max(tokens, output.completion_tokens)
                    if finished:
                        ended_at = time.perf_counter()
                        # Out of the engine already: whoever reads this last output may act
                        # on the model at once (delete, unload) before this generator closes.
                        self._in_flight -= 1
                        counted = False
                yield output
                if finished:
                    return
        finally:
            if counted:
                self._in_flight -= 1
            if not finished:
                self._submit(Abort(request.request_id))
                stats.finished[FinishReason.ABORT.value] += unfinished
            if failed:
                stats.failed += 1
            if first_at:
                stats.time_to_first_token.observe(first_at - submitted)
            if sink.admitted_at is not None:
                stats.queue_time.observe(max(0.0, sink.admitted_at - submitted))
            if ended_at:
                stats.e2e_latency.observe(ended_at - submitted)
                if tokens > 1:
                    stats.time_per_output_token.observe((ended_at - first_at) / (tokens - 1))


class Engine(AsyncEngine):
    """The engine in this process: a `StepLoop` thread beside the event loop (`--runner inline`,
    and the unit tier's fake runner)."""

    def __init__(
        self,
        runner: ModelRunner,
        n_slots: int,
        budget: BatchBudget,
        policy: QueuePolicy,
        prompt_disk: PromptDiskCache | None = None,
        speculation: SpeculationMode = SpeculationMode.OFF,
    ) -> None:
        super().__init__(n_slots + policy.max_waiting)
        core: EngineCore[_Sink] = EngineCore(
            runner,
            n_slots,
            budget,
            queue_timeout_s=policy.timeout_s,
            prompt_disk=prompt_disk,
            speculation=speculation,
        )
        self._loop_thread: StepLoop[_Sink] = StepLoop(core, self._deliver)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._loop_thread.stop(timeout)

    def abort_all(self, error: HearthError) -> None:
        """End every request, running or queued, with `error`; the engine keeps running."""
        self._loop_thread.inbox.put(AbortAll(error))

    @property
    def fault(self) -> str | None:
        """Why a step raised, if one did (`EngineCore.fault`): the engine then fails every
        request until its model is reloaded."""
        return self._loop_thread.core.fault

    @property
    def failed(self) -> str | None:
        """Never set here: an in-process engine has no runner to crash (see `fault`)."""
        return None

    def health(self) -> RunnerHealth | None:
        """None: no runner process."""
        return None

    async def revive(self) -> None:
        """Nothing to do: no runner to start again."""

    def stats(self) -> EngineStats:
        return self._loop_thread.stats()

    def _check_running(self) -> None:
        if not self._loop_thread.running:
            raise EngineError("the engine is not running")

    def _submit(self, command: Add[_Sink] | Abort) -> None:
        self._loop_thread.inbox.put(command)

    async def media_tokens(self, media: list[MediaInput]) -> list[int | str]:
        self._check_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int | str]] = loop.create_future()

        def reply(counts: list[int | str]) -> None:
            loop.call_soon_threadsafe(_settle, future, counts)

        self._loop_thread.inbox.put(MeasureMedia(tuple(media), reply))
        return await future

    def _deliver(self, outputs: list[tuple[_Sink, RequestOutput]], _seconds: float) -> None:
        if outputs and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(_put_all, outputs)


_NOT_RUN = (FinishReason.ABORT, FinishReason.ERROR)


def _settle(future: asyncio.Future[list[int | str]], counts: list[int | str]) -> None:
    if not future.done():  # its request may have been cancelled meanwhile
        future.set_result(counts)


def _put_all(outputs: list[tuple[_Sink, RequestOutput]]) -> None:
    for sink, output in outputs:
        sink.put_nowait(output)


def _failed(exc: Exception) -> RequestOutput:
    return RequestOutput(
        text="",
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        finish_reason=FinishReason.ERROR,
        error=EngineError(f"The engine could not take the request: {exc}"),
    )
