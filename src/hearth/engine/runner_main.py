"""A runner process: one loaded model, its llama contexts and its engine loop, apart from the
server, so that a native fault in llama.cpp ends this process and nothing else.

The server spawns it (`runner_process.ProcessEngine`) with one end of a socket pair and sends a
`RunnerSpec` first. This process loads the model, answers `Ready` (or `LoadFailed`), then serves
commands until `Stop`, or until the channel closes: a server that died takes its runners with it
(the closed channel, and `PR_SET_PDEATHSIG` besides).

Threads here: the main thread reads commands; the engine thread (`engine.StepLoop`) runs steps
and writes one `Step` message per step, every request's outputs together; an embeddings thread
with its own event loop serves the embedder, once the first embeddings request opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from hearth.engine.channel import (
    EmbedAbort,
    EmbedderReport,
    EmbedDone,
    EmbedRequest,
    LoadFailed,
    MediaMeasure,
    MediaMeasured,
    Ready,
    RunnerSpec,
    Step,
    StepOutput,
    Stopped,
)
from hearth.engine.commands import Abort, AbortAll, MeasureMedia, Stop
from hearth.engine.types import GenerationRequest, RequestOutput

__all__ = ["main"]

logger = logging.getLogger("hearth.runner")

_PR_SET_PDEATHSIG = 1
# What a step message carries of the engine's counters, at most this often (seconds).
_STATS_EVERY_S = 0.25


class _ChildSink:
    """A request's place in this process's engine: its id, and when it entered a slot."""

    __slots__ = ("admitted_at", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.admitted_at: float | None = None


class _Channel:
    """The socket to the server; the engine thread and the embeddings thread both write."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            try:
                self.conn.send(message)
            except OSError:  # the server is gone: the main thread sees the closed channel
                os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when the server dies (the channel closing says so too)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the prctl took effect
        os._exit(0)


class _Embeddings:
    """The embedder, on a thread with its own event loop (the embedder's API is asyncio's)."""

    def __init__(self, runner: Any, channel: _Channel) -> None:
        from hearth.engine.embedder import Embedder

        self._channel = channel
        # The server bounds requests (RemoteEmbedder); this bound only guards against a flood.
        self.embedder = Embedder(runner, max_requests=1 << 20)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        ready = threading.Event()

        def begin() -> None:
            self.embedder.start()  # takes the running loop
            ready.set()
            self._report(None)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(begin)
            loop.run_forever()

        threading.Thread(target=run, name="hearth-embed-loop", daemon=True).start()
        ready.wait()

    def embed(self, request: EmbedRequest) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._begin, request)

    def abort(self, request_id: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel, request_id)

    def abort_all(self, error: Any) -> None:
        self.embedder.abort_all(error)

    def close(self) -> None:
        self.embedder.close()

    def _report(self, last: object) -> None:
        """Send the counters when they changed, every _STATS_EVERY_S while open."""
        stats = self.embedder.stats()
        if stats != last:
            self._channel.send(EmbedderReport(stats))
        assert self._loop is not None
        self._loop.call_later(_STATS_EVERY_S, self._report, stats)

    def _begin(self, request: EmbedRequest) -> None:
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks[request.request_id] = task

    def _cancel(self, request_id: str) -> None:
        task = self._tasks.get(request_id)
        if task is not None:
            task.cancel()

    async def _run(self, request: EmbedRequest) -> None:
        try:
            vectors = await self.embedder.embed(request.request_id, request.inputs)
        except asyncio.CancelledError:
            return  # the server stopped waiting for it
        except Exception as exc:
            self._channel.send(EmbedDone(request.request_id, None, exc, self.embedder.stats()))
        else:
            self._channel.send(EmbedDone(request.request_id, vectors, None, self.embedder.stats()))
        finally:
            self._tasks.pop(request.request_id, None)


def _reply_to(channel: _Channel, request_id: str) -> Callable[[list[int | str]], None]:
    def reply(counts: list[int | str]) -> None:
        channel.send(MediaMeasured(request_id, counts))

    return reply


def serve(conn: Connection) -> None:
    from hearth.engine.core import EngineCore
    from hearth.engine.engine import Add, StepLoop
    from hearth.engine.llama_runner import LlamaRunner

    channel = _Channel(conn)
    spec: RunnerSpec = conn.recv()
    logging.basicConfig(
        level=spec.log_level.upper(),
        format=f"%(levelname)s:     runner {spec.model_id} (pid {os.getpid()}): %(message)s",
    )
    try:
        runner = LlamaRunner(spec.config)
    except Exception as exc:
        channel.send(LoadFailed(str(exc)))
        return
    disk = spec.prompt_disk
    prompt_disk = disk.open(runner.n_ctx_per_slot) if disk is not None else None
    core: EngineCore[_ChildSink] = EngineCore(
        runner,
        spec.config.n_slots,
        spec.budget,
        queue_timeout_s=spec.queue_timeout_s,
        prompt_disk=prompt_disk,
        speculation=spec.speculation,
    )
    stats_sent_at = 0.0
    gauges_sent = (-1, -1)  # slots in use, queue length: what /health last heard
    loop: StepLoop[_ChildSink]

    def on_step(outputs: list[tuple[_ChildSink, RequestOutput]], seconds: float) -> None:
        nonlocal stats_sent_at, gauges_sent
        now = time.perf_counter()
        stats = None
        # Counters every so often; the gauges whenever they move, with the outputs that moved
        # them, so /health never lags a reply.
        gauges = (core.stats.slots_in_use, core.stats.queue_length)
        if now - stats_sent_at >= _STATS_EVERY_S or gauges != gauges_sent:
            stats, stats_sent_at, gauges_sent = loop.stats(), now, gauges
        channel.send(
            Step(
                [StepOutput(s.request_id, s.admitted_at, out) for s, out in outputs],
                seconds,
                stats,
                core.fault,
            )
        )

    loop = StepLoop(core, on_step)
    embeddings = _Embeddings(runner, channel)
    channel.send(
        Ready(
            info=runner.info,
            n_ctx_per_slot=runner.n_ctx_per_slot,
            weights=runner.weights,
            n_embd=embeddings.embedder.n_embd,
            max_embed_tokens=embeddings.embedder.max_input_tokens,
            pooling=embeddings.embedder.pooling,
            vision=runner.vision,
        )
    )
    loop.start()
    embeddings_open = False
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the server is gone: nothing to save for, nobody to answer
        if isinstance(command, GenerationRequest):
            loop.inbox.put(Add(command, _ChildSink(command.request_id)))
        elif isinstance(command, Abort | AbortAll):
            loop.inbox.put(command)
            if isinstance(command, AbortAll) and embeddings_open:
                embeddings.abort_all(command.error)
        elif isinstance(command, EmbedRequest):
            if not embeddings_open:
                embeddings.start()
                embeddings_open = True
            embeddings.embed(command)
        elif isinstance(command, MediaMeasure):
            loop.inbox.put(MeasureMedia(command.media, _reply_to(channel, command.request_id)))
        elif isinstance(command, EmbedAbort):
            embeddings.abort(command.request_id)
        elif isinstance(command, Stop):
            loop.stop()  # ends every request, then writes the prompt cache
            if embeddings_open:
                embeddings.close()
            runner.close()
            channel.send(Stopped())
            return


def main() -> None:
    # The server handles Ctrl-C and SIGTERM and tells its runners (Stop); a runner has its own
    # session, so a terminal's signals never reach it, but be sure.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(os.environ["HEARTH_RUNNER_PARENT"]))
    conn = Connection(int(os.environ["HEARTH_RUNNER_FD"]))
    serve(conn)
    conn.close()


if __name__ == "__main__":
    main()
