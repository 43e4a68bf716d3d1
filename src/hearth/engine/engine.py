"""The async face of the engine: one thread owns the model, asyncio talks to it by queues.

Request side (event loop): `generate()` puts an `_Add` into the inbox and awaits a per-request
asyncio.Queue. Engine thread: drains the inbox, runs `EngineCore.step()`, and hands each step's
outputs back with one `call_soon_threadsafe`. The event loop never waits on the engine thread;
llama_decode releases the GIL, so HTTP keeps flowing while a step computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hearth.engine.commands import Abort, AbortAll, Stop
from hearth.engine.core import EngineCore, ModelRunner
from hearth.engine.types import (
    BatchBudget,
    EngineStats,
    FinishReason,
    GenerationRequest,
    QueuePolicy,
    RequestOutput,
)
from hearth.errors import (
    EngineError,
    HearthError,
    ServerOverloadedError,
    ServerShuttingDownError,
)

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

_Sink = asyncio.Queue[RequestOutput]


@dataclass(frozen=True, slots=True)
class _Add:
    request: GenerationRequest
    sink: _Sink


_Command = _Add | Abort | AbortAll | Stop


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        n_slots: int,
        budget: BatchBudget,
        policy: QueuePolicy,
    ) -> None:
        self._core: EngineCore[_Sink] = EngineCore(
            runner, n_slots, budget, queue_timeout_s=policy.timeout_s
        )
        # Requests between generate() and their end, counted on the event loop: a bound that
        # holds exactly, with no round trip to the engine thread.
        self._capacity = n_slots + policy.max_waiting
        self._in_flight = 0
        self._inbox: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="hearth-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._inbox.put(Stop())
        self._thread.join(timeout)
        self._thread = None

    def abort_all(self, error: HearthError) -> None:
        """End every request, running or queued, with `error`; the engine keeps running."""
        self._inbox.put(AbortAll(error))

    @property
    def in_flight(self) -> int:
        """Requests between generate() and their end: running, or queued for a slot."""
        return self._in_flight

    def stats(self) -> EngineStats:
        # Read from another thread: a copy of plain ints, consistent enough for a gauge.
        return copy.copy(self._core.stats)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs, its choices interleaved; it ends when every choice has.
        Leaving the iterator early aborts the request."""
        if not self._running:
            raise EngineError("the engine is not running")
        if self._in_flight >= self._capacity:
            raise ServerOverloadedError(
                f"The server is overloaded: {self._in_flight} requests are running or waiting. "
                "Retry later.",
                headers={"Retry-After": "1"},
            )
        sink: _Sink = asyncio.Queue()
        self._in_flight += 1
        self._inbox.put(_Add(request, sink))
        unfinished = request.n
        finished = False
        try:
            while True:
                output = await sink.get()
                if output.finish_reason is FinishReason.ERROR:
                    finished = True
                    raise output.error or EngineError("the engine failed this request")
                if output.finish_reason is not None:
                    unfinished -= 1
                    finished = unfinished == 0
                yield output
                if finished:
                    return
        finally:
            self._in_flight -= 1
            if not finished:
                self._inbox.put(Abort(request.request_id))

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        core, inbox = self._core, self._inbox
        while True:
            # Idle: block until a command comes. Busy: take whatever arrived since the last step
            # (this thread is the only reader, so a queue that is not empty has a command).
            if core.has_work:
                command = None if inbox.empty() else inbox.get_nowait()
            else:
                command = inbox.get()
            stop = False
            outputs: list[tuple[_Sink, RequestOutput]] = []
            while command is not None:
                if isinstance(command, Stop):
                    stop = True
                elif isinstance(command, _Add):
                    core.add(command.request, command.sink)
                elif isinstance(command, AbortAll):
                    outputs.extend(core.abort_all(command.error))
                else:
                    outputs.extend(core.abort(command.request_id))
                command = None if inbox.empty() else inbox.get_nowait()
            if stop:
                outputs.extend(
                    core.abort_all(ServerShuttingDownError("The server is shutting down."))
                )
                self._running = False
                self._deliver(outputs)
                return
            try:
                outputs.extend(core.step())
            except Exception:
                logger.exception("engine step failed; failing the requests in flight")
                outputs.extend(core.abort_all(EngineError("internal engine error")))
            self._deliver(outputs)

    def _deliver(self, outputs: list[tuple[_Sink, RequestOutput]]) -> None:
        if outputs and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(_put_all, outputs)


def _put_all(outputs: list[tuple[_Sink, RequestOutput]]) -> None:
    for sink, output in outputs:
        sink.put_nowait(output)
