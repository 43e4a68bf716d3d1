"""Many models in one server: loaded on demand, unloaded when idle past their `keep_alive`, or to
make room (least recently used first), and never while a request uses them.

The policy is plain asyncio and knows nothing of llama.cpp: a `ModelCatalog` says which names
exist and builds a model (blocking, so always in a thread via `asyncio.to_thread`). Every method
runs on the event loop, so a decision (which models to unload, what to reserve) is taken between
two awaits and needs no lock. Concurrent first requests for a name share one load task.

A `Lease` is how a request holds a model: from `acquire()` until the response is fully sent
(the whole stream). A model with a lease, or with requests still in its engine
(`in_flight`), is busy: never unloaded, never evicted. When its last lease ends, it expires
`keep_alive` seconds later (0: at once; `math.inf`: never); one background task unloads
expired models.

A model whose engine failed (`fault`) stays listed, as failed, until the next request for it:
that request waits until nothing holds the broken copy, unloads it and loads the model again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from hearth.errors import (
    HearthError,
    InsufficientMemoryError,
    ModelLoadError,
    ModelsBusyError,
)
from hearth.keep_alive import format_keep_alive

__all__ = [
    "Lease",
    "ManagerLimits",
    "ModelCatalog",
    "ModelManager",
    "ModelStatus",
    "ServedModel",
    "UnloadResult",
]

logger = logging.getLogger(__name__)

# While an expired model still has requests in its engine (no lease, but in flight), look again
# this often.
_BUSY_RECHECK_S = 0.5


class ServedModel(Protocol):
    @property
    def in_flight(self) -> int:
        """Requests running or queued in the model's engine."""

    @property
    def size_bytes(self) -> int:
        """Memory the model holds (weights and KV cache)."""

    @property
    def fault(self) -> str | None:
        """Why the model's engine failed, if it did: it must be loaded again."""

    def start(self) -> None:
        """Start serving; called on the event loop once the model is loaded."""

    def close(self) -> None:
        """Stop and free everything. Blocking: the manager runs it in a thread."""


M = TypeVar("M", bound=ServedModel)
M_co = TypeVar("M_co", bound=ServedModel, covariant=True)


class ModelCatalog(Protocol[M_co]):
    def default_keep_alive(self, name: str) -> float:
        """keep_alive seconds for a request that gives none. Raises ModelNotFoundError for a
        name that is not served. Fast: called on the event loop."""

    def estimate_bytes(self, name: str) -> int:
        """Memory the model will take once loaded. Blocking (reads the file's header)."""

    def load(self, name: str) -> M_co:
        """Load the model, not yet started. Blocking (seconds): run in a thread."""


@dataclass(frozen=True, slots=True)
class ManagerLimits:
    max_loaded: int | None = None  # models in memory at once; None: no limit
    max_memory: int | None = None  # bytes, by the models' estimates; None: no limit
    wait_timeout_s: float = 300.0  # how long a request waits for room before a 503


@dataclass(frozen=True, slots=True)
class ModelStatus(Generic[M]):
    name: str
    model: M
    leases: int
    busy: bool
    keep_alive: float
    expires_at: float | None  # wall-clock (time.time()) seconds; None: never
    size_bytes: int


UnloadResult = Literal["unloaded", "not_loaded", "pending"]


class _Entry(Generic[M]):
    __slots__ = (
        "expires_at",
        "keep_alive",
        "last_used",
        "leases",
        "loading",
        "model",
        "name",
        "size",
    )

    def __init__(self, name: str, size: int, keep_alive: float, now: float) -> None:
        self.name = name
        self.model: M | None = None
        self.loading: asyncio.Task[M] | None = None
        self.size = size
        self.leases = 0  # requests holding the model or waiting for its load
        self.keep_alive = keep_alive
        self.last_used = now
        self.expires_at: float | None = None  # monotonic; set when the last lease ends


class Lease(Generic[M]):
    """A request's hold on a loaded model. Release it once the response is fully sent."""

    __slots__ = ("_entry", "_manager", "_released")

    def __init__(self, manager: ModelManager[M], entry: _Entry[M]) -> None:
        self._manager = manager
        self._entry = entry
        self._released = False

    @property
    def name(self) -> str:
        return self._entry.name

    @property
    def model(self) -> M:
        assert self._entry.model is not None
        return self._entry.model

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._entry)

    def __enter__(self) -> Lease[M]:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class ModelManager(Generic[M]):
    def __init__(
        self,
        catalog: ModelCatalog[M],
        limits: ManagerLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._limits = limits
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[str, _Entry[M]] = {}  # loaded or loading
        self._unloading: dict[str, tuple[asyncio.Task[None], int]] = {}  # name -> (task, bytes)
        self._sizes: dict[str, int] = {}
        self._room = asyncio.Event()  # set, then replaced, whenever a model may be evictable
        self._wake = asyncio.Event()  # wakes the reaper when an expiry changes
        self._reaper: asyncio.Task[None] | None = None

    # -- requests ------------------------------------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease[M]:
        """Lease the model `name`, loading it first if needed (and unloading idle ones to make
        room). `keep_alive` (seconds, `math.inf` for ever) applies once this request ends;
        None takes the model's default. Raises ModelNotFoundError, ModelsBusyError,
        InsufficientMemoryError or ModelLoadError."""
        deadline: float | None = None
        while True:
            entry = self._entries.get(name)
            if entry is not None and entry.model is not None and entry.model.fault is not None:
                if deadline is None:
                    deadline = self._clock() + self._limits.wait_timeout_s
                await self._replace_failed(entry, deadline)
                continue
            if entry is None:
                default_keep_alive = self._catalog.default_keep_alive(name)
                size = await self._estimate(name)
                if name in self._entries:  # another request started it meanwhile
                    continue
                if deadline is None:
                    deadline = self._clock() + self._limits.wait_timeout_s
                victims = self._victims(name, size)
                if victims is None:
                    await self._wait_for_room(name, deadline)
                    continue
                entry = self._begin_load(name, size, default_keep_alive, victims)
            entry.leases += 1
            entry.expires_at = None
            if entry.model is None:
                assert entry.loading is not None
                try:
                    await asyncio.shield(entry.loading)
                except BaseException:
                    self._release(entry)
                    raise
            entry.keep_alive = (
                keep_alive if keep_alive is not None else self._catalog.default_keep_alive(name)
            )
            entry.last_used = self._clock()
            return Lease(self, entry)

    async def _replace_failed(self, entry: _Entry[M], deadline: float) -> None:
        """Unload a model whose engine failed, once the requests that hold it have ended (the
        engine fails them); the caller then loads it anew."""
        assert entry.model is not None
        if self._busy(entry):
            await self._wait_for_room(entry.name, deadline)
            return
        logger.warning("Reloading %s: its engine failed (%s)", entry.name, entry.model.fault)
        await self._begin_unload(entry, "its engine failed")

    def _release(self, entry: _Entry[M]) -> None:
        entry.leases -= 1
        entry.last_used = self._clock()
        self._settle(entry)
        self._notify_room()

    def _settle(self, entry: _Entry[M]) -> None:
        """Start the keep_alive countdown of a loaded model nobody holds."""
        if entry.leases == 0 and entry.model is not None:
            entry.expires_at = self._clock() + entry.keep_alive
            self._wake.set()

    def _busy(self, entry: _Entry[M]) -> bool:
        return entry.model is None or entry.leases > 0 or entry.model.in_flight > 0

    # -- making room ---------------------------------------------------------------------------

    async def _estimate(self, name: str) -> int:
        if self._limits.max_memory is None:
            return self._sizes.get(name, 0)
        if name not in self._sizes:
            try:
                self._sizes[name] = await asyncio.to_thread(self._catalog.estimate_bytes, name)
            except HearthError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"Could not read the model `{name}`: {exc}") from exc
        return self._sizes[name]

    def _victims(self, name: str, size: int) -> list[_Entry[M]] | None:
        """The idle models to unload so that `name` fits, least recently used first; None
        when busy models are in the way (then wait)."""
        limits = self._limits
        if limits.max_memory is not None and size > limits.max_memory:
            raise InsufficientMemoryError(
                f"The model `{name}` needs about {size} bytes, more than this server's "
                f"--max-memory ({limits.max_memory} bytes) even with no other model loaded.",
                param="model",
            )
        count = len(self._entries) + len(self._unloading)
        used = sum(e.size for e in self._entries.values())
        used += sum(size for _, size in self._unloading.values())
        excess_count = count + 1 - limits.max_loaded if limits.max_loaded is not None else 0
        excess_bytes = used + size - limits.max_memory if limits.max_memory is not None else 0
        idle = sorted(
            (e for e in self._entries.values() if not self._busy(e)), key=lambda e: e.last_used
        )
        victims = []
        for entry in idle:
            if excess_count <= 0 and excess_bytes <= 0:
                break
            victims.append(entry)
            excess_count -= 1
            excess_bytes -= entry.size
        return victims if excess_count <= 0 and excess_bytes <= 0 else None

    async def _wait_for_room(self, name: str, deadline: float) -> None:
        """Until a model may have become evictable; the caller looks again. A lease's end
        notifies at once; an engine's last request ending (`in_flight` back to 0, which may
        come just after its lease ended) is seen at the next recheck."""
        room = self._room
        remaining = deadline - self._clock()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.wait(), min(remaining, _BUSY_RECHECK_S))
            if room.is_set() or remaining > _BUSY_RECHECK_S:
                return
        busy = [e.name for e in self._entries.values() if self._busy(e)]
        raise ModelsBusyError(
            f"The model `{name}` cannot be loaded now: the loaded models "
            f"({', '.join(busy) or 'none'}) are busy and the server's limits "
            "(--max-loaded-models, --max-memory) leave no room. Retry later.",
            headers={"Retry-After": "1"},
        )

    def _notify_room(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    # -- loading and unloading -----------------------------------------------------------------

    def _begin_load(
        self, name: str, size: int, keep_alive: float, victims: list[_Entry[M]]
    ) -> _Entry[M]:
        unloads = [self._begin_unload(victim, "to make room for " + name) for victim in victims]
        entry: _Entry[M] = _Entry(name, size, keep_alive, self._clock())
        self._entries[name] = entry
        entry.loading = asyncio.create_task(self._load(entry, unloads), name=f"load {name}")
        # Nobody may await a load whose requests all left; retrieve its error so asyncio
        # does not log it as never retrieved.
        entry.loading.add_done_callback(_consume_error)
        return entry

    async def _load(self, entry: _Entry[M], unloads: list[asyncio.Task[None]]) -> M:
        name = entry.name
        try:
            for unload in unloads:
                await unload
            if name in self._unloading:  # an earlier copy of this very model is still going
                await self._unloading[name][0]
            started = self._clock()
            logger.info("Loading %s", name)
            model = await asyncio.to_thread(self._catalog.load, name)
        except BaseException as exc:
            if self._entries.get(name) is entry:
                del self._entries[name]
            self._notify_room()
            if isinstance(exc, HearthError | asyncio.CancelledError) or not isinstance(
                exc, Exception
            ):
                raise
            logger.warning("Could not load %s: %s", name, exc)
            raise ModelLoadError(f"Could not load the model `{name}`: {exc}") from exc
        model.start()
        entry.model = model
        entry.loading = None
        entry.size = self._sizes[name] = model.size_bytes
        entry.last_used = self._clock()
        logger.info("Loaded %s in %.1fs (%d MiB)", name, self._clock() - started, entry.size >> 20)
        self._settle(entry)
        return model

    def _begin_unload(self, entry: _Entry[M], why: str) -> asyncio.Task[None]:
        assert entry.model is not None
        del self._entries[entry.name]
        task = asyncio.create_task(self._unload(entry, why), name=f"unload {entry.name}")
        self._unloading[entry.name] = (task, entry.size)
        return task

    async def _unload(self, entry: _Entry[M], why: str) -> None:
        assert entry.model is not None
        try:
            await asyncio.to_thread(entry.model.close)
            logger.info("Unloaded %s (%s)", entry.name, why)
        except Exception:
            logger.exception("Unloading %s failed", entry.name)
        finally:
            if self._unloading.get(entry.name, (None, 0))[0] is asyncio.current_task():
                del self._unloading[entry.name]
            self._notify_room()

    def adopt(self, name: str, model: M, keep_alive: float) -> None:
        """Take a model loaded before the event loop ran (the startup model); `start()`
        starts it."""
        entry: _Entry[M] = _Entry(name, model.size_bytes, keep_alive, self._clock())
        entry.model = model
        self._entries[name] = entry
        self._sizes[name] = model.size_bytes

    async def load(self, name: str, keep_alive: float | None = None) -> ModelStatus[M]:
        """Load `name` now (an explicit load); it then expires like after a request."""
        lease = await self.acquire(name, keep_alive)
        lease.release()
        return self._status(lease._entry, self._clock(), self._wall_clock())

    async def unload(self, name: str) -> UnloadResult:
        """Unload `name` now if idle; if busy (or loading), once its requests end."""
        entry = self._entries.get(name)
        if entry is None:
            if name in self._unloading:
                await self._unloading[name][0]
                return "unloaded"
            self._catalog.default_keep_alive(name)  # a 404 for a name not served
            return "not_loaded"
        entry.keep_alive = 0.0
        if self._busy(entry):
            self._settle(entry)
            return "pending"
        await self._begin_unload(entry, "asked to")
        return "unloaded"

    async def reap(self) -> list[str]:
        """Unload every idle model past its keep_alive; returns their names."""
        now = self._clock()
        expired = [
            e
            for e in self._entries.values()
            if not self._busy(e) and e.expires_at is not None and e.expires_at <= now
        ]
        tasks = [
            self._begin_unload(e, f"idle past keep_alive {format_keep_alive(e.keep_alive)}")
            for e in expired
        ]
        if tasks:
            await asyncio.gather(*tasks)
        return [e.name for e in expired]

    def _next_check(self) -> float | None:
        """Seconds until the reaper should look again; None: only when woken."""
        now = self._clock()
        delays = []
        for entry in self._entries.values():
            if entry.expires_at is None or math.isinf(entry.expires_at):
                continue
            delay = entry.expires_at - now
            delays.append(max(delay, _BUSY_RECHECK_S) if delay <= 0 else delay)
        return min(delays) if delays else None

    async def _reap_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reap()
            except Exception:
                logger.exception("Unloading expired models failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_check())

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start adopted models and the reaper. Call on the event loop."""
        for entry in self._entries.values():
            if entry.model is not None:
                entry.model.start()
                self._settle(entry)
        self._reaper = asyncio.create_task(self._reap_forever(), name="hearth-reaper")

    async def close(self) -> None:
        """Stop the reaper and unload every model (their requests are aborted)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for entry in list(self._entries.values()):
            if entry.loading is not None:
                with contextlib.suppress(Exception):
                    await entry.loading
        tasks = [self._begin_unload(e, "shutting down") for e in list(self._entries.values())]
        tasks.extend(task for task, _ in list(self._unloading.values()))
        await asyncio.gather(*tasks)

    # -- observing -----------------------------------------------------------------------------

    def get(self, name: str) -> M | None:
        """The loaded model `name`, or None (not loaded, or still loading)."""
        entry = self._entries.get(name)
        return entry.model if entry is not None else None

    def loading(self) -> list[str]:
        return [e.name for e in self._entries.values() if e.model is None]

    def snapshot(self) -> list[ModelStatus[M]]:
        """The loaded models, in load order, with when each would expire."""
        now, wall = self._clock(), self._wall_clock()
        return [self._status(e, now, wall) for e in self._entries.values() if e.model is not None]

    def _status(self, entry: _Entry[M], now: float, wall: float) -> ModelStatus[M]:
        assert entry.model is not None
        busy = self._busy(entry)
        # A busy model expires keep_alive after its requests end; show that from now.
        deadline = now + entry.keep_alive if busy else entry.expires_at
        expires = None if deadline is None or math.isinf(deadline) else wall + deadline - now
        return ModelStatus(
            name=entry.name,
            model=entry.model,
            leases=entry.leases,
            busy=busy,
            keep_alive=entry.keep_alive,
            expires_at=expires,
            size_bytes=entry.size,
        )


def _consume_error(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()
