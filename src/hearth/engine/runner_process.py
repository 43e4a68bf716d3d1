"""The server's side of a runner process: `ProcessEngine` is an engine whose step loop runs in a
child process (engine/runner_main.py), so a native fault in llama.cpp ends that process, never
the server or another model.

The channel is a socket pair (engine/channel.py). The event loop writes commands; a reader
thread takes the runner's messages, one per engine step, and hands each to the event loop in one
`call_soon_threadsafe`, as the in-process engine does.

When the runner dies (any signal or exit code), or stops making progress (the watchdog, armed
only while requests are out, never during a load: no step in max(floor, 20× the slowest step)):
- requests that had an output end at once with 503 `model_crashed`, naming the model and why;
- requests that had none are kept and handed to the restarted runner: nothing is lost;
- the runner is spawned again with backoff; after `CRASH_LIMIT` crashes within `CRASH_WINDOW_S`
  the model is marked failed (503 with the last crash's reason) until it is loaded explicitly
  (`revive`).

Runners are spawned (a fresh interpreter, never a fork of a server with threads), in their own
session (a terminal's Ctrl-C reaches the server only, which stops them in order), from one
long-lived thread (`PR_SET_PDEATHSIG` fires when the spawning *thread* ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

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
    Stopped,
)
from hearth.engine.commands import Abort, AbortAll, Stop
from hearth.engine.engine import Add, AsyncEngine, _Sink
from hearth.engine.types import (
    EngineStats,
    FinishReason,
    MediaInput,
    RequestOutput,
    RunnerHealth,
)
from hearth.errors import (
    EngineError,
    HearthError,
    ModelCrashedError,
    ModelLoadError,
    ServerOverloadedError,
)

if TYPE_CHECKING:
    from hearth.engine.embedder import EmbedderStats
    from hearth.engine.types import Grammar
    from hearth.engine.vocab import Vocabulary

__all__ = ["CRASH_LIMIT", "CRASH_WINDOW_S", "ProcessEngine", "RemoteEmbedder", "RemoteRunner"]

logger = logging.getLogger(__name__)

CRASH_LIMIT = 3  # crashes within CRASH_WINDOW_S that mark a model failed
CRASH_WINDOW_S = 300.0
RESTART_BACKOFF_S = (0.5, 2.0, 5.0)  # before the 1st, 2nd, 3rd+ restart in the window
WATCHDOG_STEPS = 20  # a step may take this many times the slowest seen before the watchdog acts
_WATCHDOG_TICK_S = 0.5
_STOP_GRACE_S = 60.0  # a stopping runner may write its prompt cache this long

# One thread spawns every runner and lives as long as the server: Linux's PR_SET_PDEATHSIG
# signals the child when the thread that forked it ends, not the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hearth-spawn")


def describe_exit(returncode: int | None) -> str:
    """'signal 11 (SIGSEGV)' or 'exit code 3', from Popen's returncode."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(slots=True)
class _Tracked:
    """A request the server handed to the runner: kept until it ends, so that one the runner
    never started can be handed to the next runner."""

    request: Any  # GenerationRequest
    sink: _Sink
    started: bool = False  # an output came back: a crash now fails it
    finished_choices: int = 0


class _Process:
    """One runner process and its channel."""

    def __init__(self, popen: subprocess.Popen[bytes], conn: Connection) -> None:
        self.popen = popen
        self.conn = conn
        self.kill_reason: str | None = None  # set by the watchdog before it kills

    @property
    def pid(self) -> int:
        return self.popen.pid


def _spawn(spec: RunnerSpec) -> _Process:
    parent_end, child_end = socket.socketpair()
    env = {
        **os.environ,
        "HEARTH_RUNNER_FD": str(child_end.fileno()),
        "HEARTH_RUNNER_PARENT": str(os.getpid()),
    }
    try:
        popen = _spawner.submit(
            subprocess.Popen,
            [sys.executable, "-m", "hearth.engine.runner_main"],
            pass_fds=(child_end.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        ).result()
    finally:
        child_end.close()
    conn = Connection(parent_end.detach())
    conn.send(spec)
    return _Process(popen, conn)


def _await_ready(process: _Process, model_id: str) -> Ready:
    """Wait for the runner's first message (the load takes as long as it takes); blocking."""
    while True:
        try:
            if process.conn.poll(0.2):
                message = process.conn.recv()
                break
        except (EOFError, OSError):
            message = None
            break
        if process.popen.poll() is not None:
            message = None
            break
    if isinstance(message, Ready):
        return message
    with contextlib.suppress(OSError):
        process.conn.close()
    if isinstance(message, LoadFailed):
        process.popen.wait()
        raise ModelLoadError(f"Could not load `{model_id}`: {message.reason}")
    returncode = process.popen.wait()
    raise ModelLoadError(
        f"Could not load `{model_id}`: its runner process died while loading "
        f"({describe_exit(returncode)})"
    )


class ProcessEngine(AsyncEngine):
    def __init__(self, spec: RunnerSpec, capacity: int, watchdog_floor_s: float) -> None:
        super().__init__(capacity)
        self.spec = spec
        self.model_id = spec.model_id
        self._watchdog_floor_s = watchdog_floor_s
        self._process: _Process | None = None
        self.ready: Ready | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._stats = EngineStats(slots_total=spec.config.n_slots)
        self._fault: str | None = None
        self._stopping = False
        self._failed: str | None = None
        self._crash_times: deque[float] = deque()
        self._crashes = 0
        self._restarts = 0
        self._last_crash: str | None = None
        self._last_crash_at: float | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._slowest_step_s = 0.0
        self._last_message_at = 0.0  # perf_counter of the runner's last message
        self._busy_since = 0.0  # perf_counter when requests went out to an idle runner
        self.embedder: RemoteEmbedder | None = None
        self._measuring: dict[str, asyncio.Future[list[int | str]]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def load(self) -> Ready:
        """Spawn the runner and wait for its model to load. Blocking: call it off the loop."""
        process = _spawn(self.spec)
        self.ready = _await_ready(process, self.model_id)
        self._process = process
        return self.ready

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        assert self._process is not None, "load() first"
        self._start_reader(self._process)
        self._watchdog = self._loop.create_task(self._watch())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the runner: it ends every request, writes its prompt cache, exits. Blocking."""
        self._stopping = True
        process = self._process
        if self._watchdog is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._watchdog.cancel)
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.conn.send(Stop())
        try:
            process.popen.wait(max(timeout, _STOP_GRACE_S))
        except subprocess.TimeoutExpired:
            logger.warning("The runner of %s did not stop; killing it", self.model_id)
            process.popen.kill()
            process.popen.wait()
        with contextlib.suppress(OSError):
            process.conn.close()

    def abort_all(self, error: HearthError) -> None:
        if self._process is not None and self.ready is not None:
            with contextlib.suppress(OSError):
                self._process.conn.send(AbortAll(error))
        # Those not handed to a runner (one is restarting) end here.
        if self._restarting is not None:
            self._fail_tracked(error, started_only=False)

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def failed(self) -> str | None:
        """Why the model is marked failed (a crash loop), until it is loaded again."""
        return self._failed

    def stats(self) -> EngineStats:
        return self._stats

    def health(self) -> RunnerHealth:
        return RunnerHealth(
            pid=self._process.pid if self._process is not None else None,
            restarts=self._restarts,
            crashes=self._crashes,
            last_crash=self._last_crash,
            last_crash_at=self._last_crash_at,
            failed=self._failed,
            watchdog_s=self.watchdog_limit_s(),
        )

    async def revive(self) -> None:
        """Load a model marked failed again, forgetting its crashes (an explicit load)."""
        if self._failed is None:
            return
        self._failed = None
        self._crash_times.clear()
        await self._restart(0.0)

    # -- AsyncEngine -----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._failed is not None:
            raise ModelCrashedError(self._failed_message())
        if self._stopping:
            raise EngineError("the engine is not running")

    def _submit(self, command: Add[_Sink] | Abort) -> None:
        if isinstance(command, Add):
            request = command.request
            if not self._tracked:
                self._busy_since = time.perf_counter()
            self._tracked[request.request_id] = _Tracked(request, command.sink)
            if self._restarting is None:
                self._send(request)
            return
        if self._tracked.pop(command.request_id, None) is not None and self._restarting is None:
            self._send(command)

    async def media_tokens(self, media: list[MediaInput]) -> list[int | str]:
        self._check_running()
        future: asyncio.Future[list[int | str]] = asyncio.get_running_loop().create_future()
        request_id = uuid.uuid4().hex
        self._measuring[request_id] = future
        try:
            while self._restarting is not None:  # the next runner measures it
                await asyncio.shield(self._restarting)
            self._send(MediaMeasure(request_id, tuple(media)))
            return await future
        finally:
            self._measuring.pop(request_id, None)

    def _send(self, message: object) -> None:
        process = self._process
        if process is None:
            return
        # A dead runner: the reader thread reports it, and its requests are kept.
        with contextlib.suppress(OSError):
            process.conn.send(message)

    # -- the runner's messages (event loop) ------------------------------------------------------

    def _start_reader(self, process: _Process) -> None:
        self._last_message_at = time.perf_counter()
        thread = threading.Thread(
            target=self._read, args=(process,), name=f"hearth-runner-{process.pid}", daemon=True
        )
        thread.start()

    def _read(self, process: _Process) -> None:
        loop = self._loop
        assert loop is not None
        conn = process.conn
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(message, Stopped):
                break
            try:
                loop.call_soon_threadsafe(self._on_message, process, message)
            except RuntimeError:  # the loop closed: the server is stopping
                return
        if self._stopping:
            return
        try:
            returncode = process.popen.wait(5.0)
        except subprocess.TimeoutExpired:  # the channel closed but the process lingers
            process.popen.kill()
            returncode = process.popen.wait()
        reason = process.kill_reason or describe_exit(returncode)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._on_exit, process, reason)

    def _on_message(self, process: _Process, message: object) -> None:
        if process is not self._process:
            return  # a dead runner's last words
        self._last_message_at = time.perf_counter()
        if isinstance(message, Step):
            self._on_step(message)
        elif isinstance(message, EmbedDone) and self.embedder is not None:
            self.embedder.settle(message)
        elif isinstance(message, EmbedderReport) and self.embedder is not None:
            self.embedder.report(message.stats)
        elif isinstance(message, MediaMeasured):
            future = self._measuring.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message.counts)

    def _on_step(self, step: Step) -> None:
        if step.seconds > self._slowest_step_s:
            self._slowest_step_s = step.seconds
        if step.stats is not None:
            self._stats = step.stats
        self._fault = step.fault
        tracked = self._tracked
        for item in step.outputs:
            entry = tracked.get(item.request_id)
            if entry is None:
                continue  # aborted here meanwhile
            entry.started = True
            sink = entry.sink
            if sink.admitted_at is None and item.admitted_at is not None:
                sink.admitted_at = item.admitted_at
            output = item.output
            if output.finish_reason is FinishReason.ERROR:
                del tracked[item.request_id]
            elif output.finish_reason is not None:
                entry.finished_choices += 1
                if entry.finished_choices >= entry.request.n:
                    del tracked[item.request_id]
            sink.put_nowait(output)

    def _on_exit(self, process: _Process, reason: str) -> None:
        if process is not self._process or self._stopping:
            return
        now = time.monotonic()
        self._crashes += 1
        self._last_crash = reason
        self._last_crash_at = time.time()
        self._crash_times.append(now)
        while self._crash_times and now - self._crash_times[0] > CRASH_WINDOW_S:
            self._crash_times.popleft()
        error = ModelCrashedError(
            f"The runner of model `{self.model_id}` crashed ({reason}); this request ended with "
            "it. The model is being loaded again: retry the request."
        )
        started = [e for e in self._tracked.values() if e.started]
        self._fail_tracked(error, started_only=True)
        if self.embedder is not None:
            self.embedder.runner_died(error)
        for future in self._measuring.values():
            if not future.done():
                future.set_exception(error)
        self._measuring.clear()
        waiting = len(self._tracked)
        self._process = None
        with contextlib.suppress(OSError):
            process.conn.close()
        if len(self._crash_times) >= CRASH_LIMIT:
            self._failed = reason
            logger.error(
                "Model %s: runner (pid %d) crashed: %s; %d requests failed. %d crashes in %.0f "
                "minutes: the model is marked failed until it is loaded again",
                self.model_id,
                process.pid,
                reason,
                len(started) + waiting,
                len(self._crash_times),
                CRASH_WINDOW_S / 60,
            )
            self._fail_tracked(ModelCrashedError(self._failed_message()), started_only=False)
            return
        logger.error(
            "Model %s: runner (pid %d) crashed: %s; %d running requests failed, %d waiting "
            "ones go to its restart",
            self.model_id,
            process.pid,
            reason,
            len(started),
            waiting,
        )
        backoff = RESTART_BACKOFF_S[min(len(self._crash_times), len(RESTART_BACKOFF_S)) - 1]
        assert self._loop is not None
        self._restarting = self._loop.create_task(self._restart(backoff))

    def _failed_message(self) -> str:
        return (
            f"Model `{self.model_id}` is marked failed: its runner crashed {CRASH_LIMIT} times "
            f"within {CRASH_WINDOW_S / 60:.0f} minutes, last with {self._failed}. Load it again "
            "(POST /admin/models/load, or `hearth load`) to retry."
        )

    async def _restart(self, backoff_s: float) -> None:
        if self._restarting is None:
            self._restarting = asyncio.current_task()
        try:
            await asyncio.sleep(backoff_s)
            process = await asyncio.to_thread(_spawn, self.spec)
            try:
                ready = await asyncio.to_thread(_await_ready, process, self.model_id)
            except ModelLoadError as exc:
                self._process = process  # its exit counts as the next crash
                self._restarting = None
                self._on_exit(process, str(exc))
                return
            if self._stopping:
                process.popen.kill()
                return
            self.ready = ready
            self._process = process
            self._restarts += 1
            self._start_reader(process)
            logger.warning(
                "Model %s: runner restarted (pid %d); %d waiting requests handed to it",
                self.model_id,
                process.pid,
                len(self._tracked),
            )
        finally:
            if self._restarting is asyncio.current_task():
                self._restarting = None
        self._busy_since = time.perf_counter()
        for entry in list(self._tracked.values()):
            self._send(entry.request)

    def _fail_tracked(self, error: HearthError, *, started_only: bool) -> None:
        for request_id, entry in list(self._tracked.items()):
            if started_only and not entry.started:
                continue
            del self._tracked[request_id]
            entry.sink.put_nowait(_error_output(error))

    # -- the watchdog ------------------------------------------------------------------------------

    def watchdog_limit_s(self) -> float:
        return max(self._watchdog_floor_s, WATCHDOG_STEPS * self._slowest_step_s)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCHDOG_TICK_S)
            process = self._process
            if process is None or self._restarting is not None or not self._tracked:
                continue
            quiet_since = max(self._last_message_at, self._busy_since)
            limit = self.watchdog_limit_s()
            if time.perf_counter() - quiet_since <= limit or process.kill_reason is not None:
                continue
            process.kill_reason = (
                f"stopped making progress: no engine step ended in {limit:.0f} s; "
                "killed by the watchdog"
            )
            logger.error(
                "Model %s: runner (pid %d) %s", self.model_id, process.pid, process.kill_reason
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


def _error_output(error: HearthError) -> RequestOutput:
    return RequestOutput(
        text="",
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
        finish_reason=FinishReason.ERROR,
        error=error,
    )


class RemoteEmbedder:
    """The embedder of a runner process, with the in-process `Embedder`'s face."""

    def __init__(self, engine: ProcessEngine, max_requests: int) -> None:
        ready = engine.ready
        assert ready is not None
        self._engine = engine
        self._max_requests = max_requests
        self.n_embd = ready.n_embd
        self.max_input_tokens = ready.max_embed_tokens
        self.pooling = ready.pooling
        self._waiting: dict[str, asyncio.Future[list[list[float]]]] = {}
        self._stats: EmbedderStats | None = None

    def start(self) -> None:
        """The runner opens its embedding context on the first request."""

    def close(self, timeout: float = 30.0) -> None:
        """The context goes with the runner."""

    def abort_all(self, error: HearthError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    def stats(self) -> EmbedderStats:
        from hearth.engine.embedder import EmbedderStats

        return self._stats if self._stats is not None else EmbedderStats()

    async def embed(self, request_id: str, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        self._engine._check_running()
        if len(self._waiting) >= self._max_requests:
            raise ServerOverloadedError(
                f"The server is overloaded: {len(self._waiting)} embedding requests are running "
                "or waiting. Retry later.",
                headers={"Retry-After": "1"},
            )
        future: asyncio.Future[list[list[float]]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._engine._send(EmbedRequest(request_id, tuple(tuple(t) for t in inputs)))
        try:
            return await future
        finally:
            self._waiting.pop(request_id, None)
            if future.cancelled():
                self._engine._send(EmbedAbort(request_id))

    def report(self, stats: EmbedderStats) -> None:
        self._stats = stats

    def settle(self, done: EmbedDone) -> None:
        self._stats = done.stats
        future = self._waiting.get(done.request_id)
        if future is None or future.done():
            return
        if done.error is not None:
            future.set_exception(done.error)
        else:
            assert done.vectors is not None
            future.set_result(done.vectors)

    def runner_died(self, error: HearthError) -> None:
        self.abort_all(error)


class RemoteRunner:
    """The server's view of a model loaded in a runner process: its vocabulary (a vocab-only
    load, engine/vocab.py) for tokenizing and grammars, and what the runner reported of its
    load. `engine.ready` changes when a runner restarts; the facts here do not."""

    def __init__(self, vocabulary: Vocabulary, engine: ProcessEngine) -> None:
        ready = engine.ready
        assert ready is not None, "load the runner first"
        self._vocabulary = vocabulary
        self.info = ready.info
        self.n_ctx_per_slot = ready.n_ctx_per_slot
        self.weights = ready.weights
        self.n_slots = engine.spec.config.n_slots
        self.n_vocab = vocabulary.n_vocab
        self.vision = ready.vision

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        return self._vocabulary.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._vocabulary.detokenize(tokens)

    def check_grammar(self, grammar: Grammar) -> bool:
        return self._vocabulary.check_grammar(grammar)

    def close(self) -> None:
        self._vocabulary.close()
