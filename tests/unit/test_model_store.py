"""The store on disk: atomic installs, manifests, case-insensitive names, no half entries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hearth.cli import humanize
from hearth.models.store import (
    PART_MAX_AGE_S,
    InvalidModelNameError,
    ModelStore,
    check_model_name,
)


def staged(store: ModelStore, content: bytes) -> Path:
    path = store.temp_path(".gguf")
    path.write_bytes(content)
    return path


def test_install_get_list_and_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    model = store.install(
        "hf.co/Org/Repo:Q4_K_M", staged(store, b"GGUF-1"), source="test", sha256="aa" * 32
    )
    assert model.path == tmp_path / "models" / "hf.co%2forg%2frepo%3aq4_k_m.gguf"
    assert model.path.read_bytes() == b"GGUF-1" and model.size_bytes == 6
    manifest = json.loads(model.path.with_suffix(".json").read_text())
    assert manifest["name"] == "hf.co/Org/Repo:Q4_K_M" and manifest["sha256"] == "aa" * 32
    assert list(store.staging_dir.iterdir()) == []  # moved, not copied

    # Names are case-insensitive, as repo ids on the hub are; the stored spelling is kept.
    assert store.get("HF.CO/org/repo:q4_k_m") == model
    assert [m.name for m in store.entries()] == ["hf.co/Org/Repo:Q4_K_M"]

    assert store.remove("hf.co/org/repo:Q4_K_M") == model
    assert store.entries() == [] and sorted(p.name for p in store.root.iterdir()) == [".partial"]
    assert store.remove("hf.co/org/repo:Q4_K_M") is None


def test_names_that_differ_only_in_separators_do_not_collide(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.install("a/b:c", staged(store, b"1"), source="t", sha256="1")
    store.install("a:b/c", staged(store, b"22"), source="t", sha256="2")
    store.install("a-b-c", staged(store, b"333"), source="t", sha256="3")
    assert {m.name: m.size_bytes for m in store.entries()} == {"a/b:c": 1, "a:b/c": 2, "a-b-c": 3}


def test_a_model_without_its_manifest_or_file_is_not_listed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    a = store.install("a:1", staged(store, b"aaa"), source="t", sha256="1")
    b = store.install("b:1", staged(store, b"bbb"), source="t", sha256="2")
    c = store.install("c:1", staged(store, b"ccc"), source="t", sha256="3")
    a.path.with_suffix(".json").unlink()  # a crash between the model's rename and the manifest's
    b.path.unlink()
    c.path.write_bytes(b"cc")  # changed behind the store's back
    (store.root / "junk.json").write_text("{not json")
    assert store.entries() == []
    assert store.get("a:1") is None and store.get("b:1") is None and store.get("c:1") is None


@pytest.mark.parametrize("name", ["", "x y", "../up", "/abs", "a//b", "a/", "model.gguf", "-x"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidModelNameError):
        check_model_name(name)
    store = ModelStore(tmp_path)
    with pytest.raises(InvalidModelNameError):
        store.install(name, staged(store, b"x"), source="t", sha256="1")


def test_humanize() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert humanize.relative_time(now - timedelta(days=3, hours=1), now) == "3 days ago"
    assert humanize.relative_time(now + timedelta(minutes=4, seconds=30), now) == "in 4 minutes"
    assert humanize.relative_time(now, now) == "just now"
    assert humanize.parameters(134_515_008) == "134.5M"
    assert humanize.parameters(7_241_732_096) == "7.2B"
    assert humanize.size(98_362_432) == "98.4 MB" and humanize.size(None) == "—"
    assert re.fullmatch(r"\d+ B", humanize.size(12))


def dead_pid() -> int:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(finished.stdout)


def test_clean_staging_deletes_orphans_and_bounds_downloads(tmp_path: Path) -> None:
    models = ModelStore(tmp_path)
    staging = models.staging_dir
    now = time.time()
    orphan = staging / f"{dead_pid()}-{'a' * 32}.gguf"
    ours = models.temp_path(".gguf")
    legacy_idle = staging / f"{'b' * 32}.gguf"
    legacy_fresh = staging / f"{'c' * 32}.gguf"
    stale_part = staging / f"{'1' * 64}.part"
    fresh_part = staging / f"{'2' * 64}.part"
    other = staging / "notes.txt"
    for path in (orphan, ours, legacy_idle, legacy_fresh, stale_part, fresh_part, other):
        path.write_bytes(b"x")
    os.utime(legacy_idle, (now - 2 * 3600, now - 2 * 3600))
    old = now - PART_MAX_AGE_S - 1
    os.utime(stale_part, (old, old))

    removed = models.clean_staging(now)

    assert sorted(removed) == sorted([orphan, legacy_idle, stale_part])
    for kept in (ours, legacy_fresh, fresh_part, other):
        assert kept.exists()


def test_clean_staging_keeps_downloads_within_the_size_bound_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hearth.models.store.PART_MAX_BYTES", 10)
    models = ModelStore(tmp_path)
    now = time.time()
    parts = []
    for age_h, digit in ((5, "1"), (3, "2"), (0, "3")):
        path = models.staging_dir / f"{digit * 64}.part"
        path.write_bytes(b"x" * 6)
        os.utime(path, (now - age_h * 3600, now - age_h * 3600))
        parts.append(path)
    # 18 bytes past a bound of 10: the oldest idle ones go until within it; the one being
    # written (touched just now) stays whatever the total.
    assert models.clean_staging(now) == [parts[0], parts[1]]
    assert parts[2].exists()


def test_the_default_context_is_the_trained_one_as_memory_allows() -> None:
    """SmolLM2 was trained for 8192 tokens; its f16 KV cache takes 22.5 KiB a token."""
    from hearth.models.footprint import MIN_CONTEXT, default_context, model_shape
    from hearth.models.registry import embedded_model_path

    path = embedded_model_path()
    shape = model_shape(path)
    assert shape.context_length == 8192 and shape.kv_bytes_per_token == 23040
    weights = path.stat().st_size
    plenty = 64 << 30
    assert default_context(path, 4, memory=plenty) == 8192
    # Half of what is left after the weights, for 4 slots: 4 × 2048 × 22.5 KiB is 180 MiB.
    tight = weights + 2 * 4 * 2048 * 23040
    assert default_context(path, 4, memory=tight) == 2048
    assert default_context(path, 4, 0.5, memory=tight) == 4096  # a q8_0-ish cache, half the size
    assert default_context(path, 4, memory=weights) == MIN_CONTEXT
