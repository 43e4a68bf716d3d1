"""The served names come from an index in memory: after its first load, a request for a store
model does no file-system work on the event loop. The index follows the store and Ollama's
manifests (refreshed off the loop), and a name it lacks gets one rescan before the 404."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hearth.errors import ModelNotFoundError
from hearth.models import registry
from hearth.models.manager import ManagerLimits, ModelManager
from hearth.models.ollama_store import LAYER_MODEL
from hearth.server.catalog import ModelSpec, ServerCatalog
from hearth.server.state import LoadedModel, ServerState
from hearth.settings import ServeSettings

# File-system events Python audits (sys.addaudithook); os.stat is not one, so it is counted by
# wrapping it below.
_AUDITED = {"open", "os.listdir", "os.scandir", "glob.glob", "pathlib.Path.glob"}


@dataclass
class _Watch:
    """Counts file-system calls made on one thread (the event loop's) while on."""

    thread: int | None = None
    calls: Counter[str] | None = None

    def note(self, event: str) -> None:
        if self.calls is not None and threading.get_ident() == self.thread:
            self.calls[event] += 1


_WATCH = _Watch()


def _audit(event: str, _args: tuple[Any, ...]) -> None:
    if event in _AUDITED:
        _WATCH.note(event)


sys.addaudithook(_audit)  # an audit hook cannot be removed: it counts only while a test asks


@pytest.fixture
def fs_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Counter[str]]]:
    real_stat = os.stat

    def counted_stat(*args: Any, **kwargs: Any) -> os.stat_result:
        _WATCH.note("os.stat")
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counted_stat)

    def start_counting() -> Counter[str]:
        _WATCH.thread, _WATCH.calls = threading.get_ident(), Counter()
        return _WATCH.calls

    yield start_counting
    _WATCH.thread, _WATCH.calls = None, None


@dataclass
class _Served:
    """A model the manager holds; nothing loads for real here."""

    name: str
    in_flight: int = 0
    size_bytes: int = 0
    fault: str | None = None
    preset: None = None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def _install(name: str) -> None:
    store = registry.store()
    staged = store.temp_path(".gguf")
    staged.write_bytes(b"GGUF not really")
    store.install(name, staged, source="test", sha256="00" * 32)


def _ollama_model(name: str, tag: str) -> None:
    root = Path(os.environ["OLLAMA_MODELS"])
    digest = "ab" * 32
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"GGUF not really")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [{"mediaType": LAYER_MODEL, "digest": f"sha256:{digest}", "size": 15}]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))


def _state() -> tuple[ServerState, list[str]]:
    loads: list[str] = []

    def load(spec: ModelSpec) -> LoadedModel:
        loads.append(spec.name)
        return _Served(spec.name)  # type: ignore[return-value]

    settings = ServeSettings(ctx_size=512)  # a known context: a load reads no GGUF header
    catalog = ServerCatalog(settings, {}, load)
    manager: ModelManager[LoadedModel] = ModelManager(catalog, ManagerLimits(max_loaded=4))
    return ServerState(settings=settings, catalog=catalog, models=manager, devices=[]), loads


def test_a_store_model_is_found_with_no_file_system_work_on_the_loop_after_its_load(
    fs_calls: Callable[[], Counter[str]],
) -> None:
    _install("tiny:latest")
    state, loads = _state()

    async def scenario() -> Counter[str]:
        with await state.acquire("tiny"):  # the first load reads what it needs (in a thread)
            pass
        calls = fs_calls()
        for name in ("tiny", "tiny:latest", "tiny", "smollm2:135m"):
            with await state.acquire(name) as lease:
                assert lease.model is state.models.get(state.catalog.canonical(name))
        state.catalog.spec("tiny:latest")
        state.catalog.names()
        await state.models.close()
        return calls

    calls = asyncio.run(scenario())
    assert loads == ["tiny:latest", "smollm2:135m"]
    assert calls == Counter(), calls  # nothing: no open, no listing, no stat


def test_a_model_pulled_after_the_start_is_found_by_one_rescan_and_a_missing_one_is_a_404(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, loads = _state()
    scans: list[int] = []
    real_list_models = registry.list_models

    def counted_list_models() -> list[registry.ModelEntry]:
        scans.append(1)
        return real_list_models()

    monkeypatch.setattr(registry, "list_models", counted_list_models)

    async def scenario() -> None:
        _install("later:latest")  # as `hearth pull` in another process, after the start
        with await state.acquire("later") as lease:
            assert lease.name == "later:latest"
        assert len(scans) == 1
        with pytest.raises(ModelNotFoundError, match="`nowhere` does not exist"):
            await state.acquire("nowhere")
        assert len(scans) == 2  # one rescan before the 404, no more
        await state.models.close()

    asyncio.run(scenario())
    assert loads == ["later:latest"]


def test_the_index_follows_the_store_and_ollamas_manifests() -> None:
    state, _ = _state()
    index = state.catalog.index
    assert not index.refresh()  # nothing changed: no rescan
    _ollama_model("olla", "latest")
    assert index.refresh()
    assert "olla:latest" in state.catalog.names()
    _ollama_model("olla", "small")  # a second tag of the same model
    assert index.refresh() and "olla:small" in index
    _install("stored:latest")
    assert index.refresh() and "stored:latest" in index
    registry.store().remove("stored:latest")
    assert index.refresh() and "stored:latest" not in index
    assert not index.refresh()


def test_the_app_refreshes_the_index_off_the_loop_until_its_lifespan_ends() -> None:
    state, _ = _state()

    async def scenario() -> None:
        watcher = asyncio.create_task(state.catalog.watch_index(interval_s=0.01))
        _install("watched:latest")
        for _ in range(500):
            if "watched:latest" in state.catalog.index:
                break
            await asyncio.sleep(0.01)
        watcher.cancel()
        assert "watched:latest" in state.catalog.names()

    asyncio.run(scenario())
