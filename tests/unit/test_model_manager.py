"""The model manager's policy with a fake catalog: no model, no llama.cpp, a fake clock."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from hearth.errors import (
    InsufficientMemoryError,
    ModelLoadError,
    ModelNotFoundError,
    ModelsBusyError,
)
from hearth.keep_alive import FOREVER_AFTER_S, format_keep_alive, parse_keep_alive
from hearth.models.manager import ManagerLimits, ModelManager

T = TypeVar("T")


class FakeModel:
    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size_bytes = size
        self.in_flight = 0
        self.fault: str | None = None
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


class FakeCatalog:
    def __init__(self, sizes: dict[str, int], keep_alive: float = 300.0) -> None:
        self.sizes = sizes
        self.keep_alive = keep_alive
        self.loads: Counter[str] = Counter()
        self.models: list[FakeModel] = []
        self.gate: threading.Event | None = None  # when set, loads wait for it
        self.broken: set[str] = set()

    def default_keep_alive(self, name: str) -> float:
        if name not in self.sizes:
            raise ModelNotFoundError(f"no model {name}", param="model")
        return self.keep_alive

    def estimate_bytes(self, name: str) -> int:
        return self.sizes[name]

    def load(self, name: str) -> FakeModel:
        self.loads[name] += 1
        if self.gate is not None:
            assert self.gate.wait(5)
        if name in self.broken:
            raise RuntimeError("llama.cpp could not load it")
        model = FakeModel(name, self.sizes[name])
        self.models.append(model)
        return model


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(test())


def make(
    sizes: dict[str, int] | None = None,
    *,
    max_loaded: int | None = None,
    max_memory: int | None = None,
    wait: float = 300.0,
    keep_alive: float = 300.0,
) -> tuple[ModelManager[FakeModel], FakeCatalog, FakeClock]:
    catalog = FakeCatalog(sizes or {"a": 10, "b": 10, "c": 10}, keep_alive)
    clock = FakeClock()
    limits = ManagerLimits(max_loaded=max_loaded, max_memory=max_memory, wait_timeout_s=wait)
    manager = ModelManager(catalog, limits, clock=clock, wall_clock=lambda: 5000.0 + clock.now)
    return manager, catalog, clock


def loaded(manager: ModelManager[FakeModel]) -> list[str]:
    return [status.name for status in manager.snapshot()]


# -- keep_alive parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (2.5, 2.5),
        (0, 0.0),
        (-1, math.inf),
        ("10m", 600.0),
        ("30s", 30.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5m", 90.0),
        ("0", 0.0),
        ("300", 300.0),
        ("-1", math.inf),
        ("-5m", math.inf),
    ],
)
def test_keep_alive_takes_ollamas_forms(value: str | int | float, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize(
    "value", [1.661621883407292e217, "1e300", "9999999999999h", 10**30, -(10**400), 10**400]
)
def test_keep_alive_past_any_clock_is_forever(value: str | int | float) -> None:
    # Found by the fuzzer: a keep_alive of 1.66e217 seconds made every /api/ps and /health a 500
    # (no datetime is that far away) for as long as the model stayed loaded.
    assert parse_keep_alive(value) == math.inf
    assert parse_keep_alive(FOREVER_AFTER_S) == FOREVER_AFTER_S


@pytest.mark.parametrize("value", ["", "ten minutes", "10x", "5 m", "m", True])
def test_keep_alive_refuses_what_is_not_a_duration(value: str | bool) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_keep_alive_formats_for_logs() -> None:
    assert [format_keep_alive(s) for s in (math.inf, 0.0, 300.0, 90.0)] == [
        "forever",
        "0s",
        "5m",
        "90s",
    ]


# -- loading on demand -------------------------------------------------------------------------


def test_concurrent_first_requests_load_once() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make()
        catalog.gate = threading.Event()
        acquiring = [asyncio.create_task(manager.acquire("a")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert manager.loading() == ["a"]
        catalog.gate.set()
        leases = await asyncio.gather(*acquiring)
        assert catalog.loads == Counter({"a": 1})
        assert {id(lease.model) for lease in leases} == {id(catalog.models[0])}
        assert catalog.models[0].started
        assert manager.loading() == []
        for lease in leases:
            lease.release()

    run(scenario)


def test_unknown_name_is_a_404_without_loading() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make()
        with pytest.raises(ModelNotFoundError):
            await manager.acquire("nope")
        assert not catalog.loads

    run(scenario)


def test_a_failed_load_is_reported_and_retried_by_the_next_request() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make()
        catalog.broken.add("a")
        with pytest.raises(ModelLoadError, match="could not load"):
            await manager.acquire("a")
        assert loaded(manager) == [] and manager.loading() == []
        catalog.broken.clear()
        with await manager.acquire("a") as lease:
            assert lease.model.name == "a"
        assert catalog.loads["a"] == 2

    run(scenario)


# -- eviction ----------------------------------------------------------------------------------


def test_least_recently_used_idle_model_is_evicted() -> None:
    async def scenario() -> None:
        manager, catalog, clock = make(max_loaded=2)
        for name in ("a", "b"):
            (await manager.acquire(name)).release()
            clock.now += 1
        (await manager.acquire("a")).release()  # a is now the more recent
        clock.now += 1
        (await manager.acquire("c")).release()
        assert loaded(manager) == ["a", "c"]
        b = next(m for m in catalog.models if m.name == "b")
        assert b.closed

    run(scenario)


def test_a_busy_model_is_never_evicted_the_request_waits_then_gets_503() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make(max_loaded=1, wait=0.1)
        lease = await manager.acquire("a")
        with pytest.raises(ModelsBusyError) as caught:
            await manager.acquire("b")
        assert caught.value.status_code == 503
        assert "a" in caught.value.message
        assert loaded(manager) == ["a"] and not lease.model.closed
        assert "b" not in catalog.loads
        lease.release()

    run(scenario)


def test_a_model_with_requests_in_its_engine_is_busy_even_without_a_lease() -> None:
    async def scenario() -> None:
        manager, _, _ = make(max_loaded=1, wait=0.1)
        lease = await manager.acquire("a")
        lease.release()
        lease.model.in_flight = 1
        with pytest.raises(ModelsBusyError):
            await manager.acquire("b")
        assert not lease.model.closed

    run(scenario)


def test_a_waiting_request_sees_an_engine_go_idle_after_its_lease_ended() -> None:
    """A stream's lease ends with its last byte; its engine request may end a moment later,
    with nothing to notify the manager then: a waiting request looks again by itself."""

    async def scenario() -> None:
        manager, _, _ = make(max_loaded=1, wait=30)
        lease = await manager.acquire("a")
        lease.model.in_flight = 1
        lease.release()
        waiting = asyncio.create_task(manager.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        lease.model.in_flight = 0  # no lease event: only a recheck can see it
        second = await asyncio.wait_for(waiting, 5)
        assert second.model.name == "b" and lease.model.closed
        second.release()

    run(scenario)


def test_a_waiting_request_loads_once_the_busy_model_is_released() -> None:
    async def scenario() -> None:
        manager, _, _ = make(max_loaded=1, wait=5)
        first = await manager.acquire("a")
        waiting = asyncio.create_task(manager.acquire("b"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not first.model.closed
        first.release()
        second = await waiting
        assert second.model.name == "b"
        assert first.model.closed
        assert loaded(manager) == ["b"]
        second.release()

    run(scenario)


def test_memory_limit_evicts_until_the_new_model_fits() -> None:
    async def scenario() -> None:
        manager, catalog, clock = make({"a": 60, "b": 50, "c": 30}, max_memory=100)
        (await manager.acquire("a")).release()
        clock.now += 1
        (await manager.acquire("b")).release()  # 60 + 50 > 100: a goes
        assert loaded(manager) == ["b"]
        clock.now += 1
        (await manager.acquire("c")).release()  # 50 + 30 fits
        assert loaded(manager) == ["b", "c"]
        assert [m.name for m in catalog.models if m.closed] == ["a"]

    run(scenario)


def test_a_model_larger_than_the_memory_limit_is_refused_at_once() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make({"a": 60, "huge": 500}, max_memory=100)
        with pytest.raises(InsufficientMemoryError) as caught:
            await manager.acquire("huge")
        assert caught.value.status_code == 503
        assert not catalog.loads

    run(scenario)


# -- keep_alive --------------------------------------------------------------------------------


def test_idle_model_unloads_when_keep_alive_runs_out() -> None:
    async def scenario() -> None:
        manager, catalog, clock = make(keep_alive=300)
        (await manager.acquire("a")).release()
        clock.now += 299
        assert await manager.reap() == []
        clock.now += 2
        assert await manager.reap() == ["a"]
        assert catalog.models[0].closed and loaded(manager) == []

    run(scenario)


def test_keep_alive_counts_from_the_end_of_the_last_request() -> None:
    async def scenario() -> None:
        manager, _, clock = make(keep_alive=300)
        first = await manager.acquire("a")
        second = await manager.acquire("a")
        first.release()
        clock.now += 1000  # the second request runs long
        assert await manager.reap() == []
        second.release()
        clock.now += 299
        assert await manager.reap() == []
        clock.now += 2
        assert await manager.reap() == ["a"]

    run(scenario)


def test_keep_alive_zero_unloads_after_the_request_and_minus_one_never() -> None:
    async def scenario() -> None:
        manager, _, clock = make()
        (await manager.acquire("a", keep_alive=0.0)).release()
        (await manager.acquire("b", keep_alive=math.inf)).release()
        assert await manager.reap() == ["a"]
        clock.now += 10**9
        assert await manager.reap() == []
        [status] = manager.snapshot()
        assert status.name == "b" and status.expires_at is None

    run(scenario)


def test_snapshot_gives_wall_clock_expiry() -> None:
    async def scenario() -> None:
        manager, _, clock = make(keep_alive=60)
        lease = await manager.acquire("a")
        [busy] = manager.snapshot()
        assert busy.busy and busy.expires_at == 5000.0 + clock.now + 60
        lease.release()
        clock.now += 10
        [idle] = manager.snapshot()
        assert not idle.busy and idle.expires_at == 5000.0 + clock.now + 50

    run(scenario)


def test_the_reaper_task_unloads_keep_alive_zero_models_by_itself() -> None:
    async def scenario() -> None:
        manager = ModelManager(FakeCatalog({"a": 1}), ManagerLimits())
        manager.start()
        lease = await manager.acquire("a", keep_alive=0.0)
        model = lease.model
        lease.release()
        for _ in range(100):
            if model.closed:
                break
            await asyncio.sleep(0.01)
        assert model.closed and manager.snapshot() == []
        await manager.close()

    run(scenario)


# -- explicit load and unload ------------------------------------------------------------------


def test_explicit_unload_of_idle_busy_and_absent_models() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make()
        await manager.load("a", keep_alive=math.inf)
        assert loaded(manager) == ["a"]
        assert await manager.unload("a") == "unloaded"
        assert catalog.models[0].closed
        assert await manager.unload("a") == "not_loaded"
        with pytest.raises(ModelNotFoundError):
            await manager.unload("nope")

        lease = await manager.acquire("b")
        assert await manager.unload("b") == "pending"
        assert await manager.reap() == []
        lease.release()
        assert await manager.reap() == ["b"]

    run(scenario)


def test_adopted_startup_model_is_started_and_closed() -> None:
    async def scenario() -> None:
        manager, _, _ = make()
        startup = FakeModel("a", 10)
        manager.adopt("a", startup, math.inf)
        manager.start()
        assert startup.started and manager.get("a") is startup
        await manager.close()
        assert startup.closed and manager.snapshot() == []

    run(scenario)


def test_a_model_whose_engine_failed_is_reloaded_once_its_requests_end() -> None:
    async def scenario() -> None:
        manager, catalog, _ = make(wait=5)
        holder = await manager.acquire("a")
        broken = holder.model
        broken.fault = "RuntimeError: boom"
        # The next request waits while the broken copy is held (its requests are failing).
        waiting = asyncio.create_task(manager.acquire("a"))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not broken.closed
        assert [s.model.fault for s in manager.snapshot()] == ["RuntimeError: boom"]
        holder.release()
        fresh = await waiting
        assert broken.closed
        assert fresh.model is not broken and fresh.model.fault is None
        assert catalog.loads["a"] == 2
        fresh.release()

    run(scenario)
