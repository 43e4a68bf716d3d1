"""The store on disk: atomic installs, manifests, case-insensitive names, no half entries."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hearth.cli import humanize
from hearth.models.store import InvalidModelNameError, ModelStore, check_model_name


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
