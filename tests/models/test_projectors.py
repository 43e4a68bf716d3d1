"""Projectors (mmproj GGUFs) kept beside models in the store: pulled with a hub repo's model or
an Ollama model's projector layer, imported as a pair, read in place from Ollama's store,
carried by `cp`, named by `show`, and given to the model when the server loads it."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from click.testing import CliRunner

from hearth.cli.main import cli
from hearth.models import registry
from hearth.models.pull import (
    HubFile,
    PullError,
    PullReporter,
    PullSourceError,
    pull,
    select_mmproj,
)
from hearth.models.store import ModelStore
from hearth.settings import hearth_home
from tests.models.fake_hub import FakeHub, HubBlob, running_hub
from tests.models.fake_registry import FakeRegistry, ollama_store, running_registry

VISION_REPO = "hearth-test/Tiny-Vision-GGUF"
ONE_PROJECTOR_REPO = "hearth-test/Tiny-Llava-GGUF"
PROJECTORS = ["mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-Q8_0.gguf"]


def _make_test_mmproj() -> ModuleType:
    # The script, loaded as tests/server/media_helpers.py loads it, for its seed argument.
    script = Path(__file__).parents[2] / "scripts" / "make_test_mmproj.py"
    spec = importlib.util.spec_from_file_location("make_test_mmproj", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def projectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny valid projectors for SmolLM2, one per name, each with its own weights."""
    folder = tmp_path_factory.mktemp("projectors")
    writer = _make_test_mmproj()
    files = {}
    for seed, name in enumerate(PROJECTORS):
        writer.write_test_mmproj(folder / name, seed=seed)
        files[name] = folder / name
    return files


class Notes(PullReporter):
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.resolved_files: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def resolved(self, file: HubFile) -> None:
        self.resolved_files.append(file.filename)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(name: str) -> dict[str, object]:
    path = ModelStore(hearth_home()).model_path(name).with_suffix(".json")
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


# --- which projector ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "files", "expected"),
    [
        ("m-Q8_0.gguf", ["mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf"], "mmproj-m-Q8_0.gguf"),
        ("m-BF16.gguf", ["mmproj-F32.gguf", "mmproj-BF16.gguf", "mmproj-F16.gguf"], "mmproj-BF16.gguf"),  # noqa: E501
        ("m-Q4_K_M.gguf", ["mmproj-F32.gguf", "mmproj-F16.gguf"], "mmproj-F16.gguf"),
        ("m-Q4_K_M.gguf", ["mmproj-b.gguf", "mmproj-a.gguf"], "mmproj-a.gguf"),
        ("m-Q4_K_M.gguf", ["sub/mmproj-model.gguf"], "sub/mmproj-model.gguf"),
    ],
)  # fmt: skip
def test_select_mmproj_prefers_the_models_precision_then_f16_then_the_first(
    model: str, files: list[str], expected: str
) -> None:
    listed = [HubFile(model), *(HubFile(name) for name in files), HubFile("README.md")]
    chosen, note = select_mmproj(listed, HubFile(model))
    assert chosen is not None and chosen.filename == expected
    assert note is not None and expected in note


def test_select_mmproj_without_one_or_for_a_projector() -> None:
    assert select_mmproj([HubFile("m-Q4_K_M.gguf")], HubFile("m-Q4_K_M.gguf")) == (None, None)
    files = [HubFile("mmproj-F16.gguf")]
    assert select_mmproj(files, HubFile("mmproj-F16.gguf")) == (None, None)


# --- the hub --------------------------------------------------------------------------------


@pytest.fixture()
def vision_hub(
    tiny_files: dict[str, Path], projectors: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    models = {name: HubBlob(path=tiny_files[name]) for name in tiny_files}
    fake = FakeHub(
        repos={
            VISION_REPO: models | {name: HubBlob(path=path) for name, path in projectors.items()},
            ONE_PROJECTOR_REPO: {
                "Tiny-1B-Q8_0.gguf": HubBlob(path=tiny_files["Tiny-1B-Q8_0.gguf"]),
                "mmproj-model-f16.gguf": HubBlob(path=projectors["mmproj-BF16.gguf"]),
            },
        }
    )
    with running_hub(fake):
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def test_a_hub_pull_brings_the_projector_of_the_models_precision(
    vision_hub: FakeHub, projectors: dict[str, Path]
) -> None:
    notes = Notes()
    result = pull(f"hf.co/{VISION_REPO}:Q8_0", reporter=notes)
    model = result.model
    assert model.mmproj is not None
    assert model.mmproj.sha256 == sha256_of(projectors["mmproj-Q8_0.gguf"])
    assert model.mmproj.path.read_bytes() == projectors["mmproj-Q8_0.gguf"].read_bytes()
    assert model.mmproj.source.startswith(f"hf.co/{VISION_REPO}/mmproj-Q8_0.gguf@")
    assert any("mmproj-Q8_0.gguf (the model's precision, Q8_0)" in note for note in notes.notes)
    assert notes.resolved_files == ["Tiny-1B-Q8_0.gguf", "mmproj-Q8_0.gguf"]
    # Both files went through the same resumable download: nothing left in .partial.
    assert list((hearth_home() / "models" / ".partial").iterdir()) == []

    stored = manifest_of(model.name)["mmproj"]
    assert stored == {
        "file": f"mmproj/{model.path.name}",
        "sha256": model.mmproj.sha256,
        "size": model.mmproj.size_bytes,
        "source": model.mmproj.source,
    }
    assert registry.resolve(model.name).mmproj_path == model.mmproj.path
    assert registry.find(model.name).mmproj_path == model.mmproj.path
    index = registry.ModelIndex().find(model.name)
    assert index is not None and index.mmproj == model.mmproj

    downloads = len(vision_hub.downloads)
    assert pull(f"hf.co/{VISION_REPO}:Q8_0").up_to_date
    assert len(vision_hub.downloads) == downloads


def test_a_hub_pull_falls_back_to_f16_and_to_the_only_projector(
    vision_hub: FakeHub, projectors: dict[str, Path]
) -> None:
    default = pull(f"hf.co/{VISION_REPO}").model  # Q4_K_M: no projector of that precision
    assert default.mmproj is not None
    assert default.mmproj.sha256 == sha256_of(projectors["mmproj-F16.gguf"])
    only = pull(f"hf.co/{ONE_PROJECTOR_REPO}").model
    assert only.mmproj is not None and "mmproj-model-f16.gguf" in only.mmproj.source


def test_a_projector_added_later_downloads_only_the_projector(
    vision_hub: FakeHub, projectors: dict[str, Path]
) -> None:
    files = vision_hub.repos[ONE_PROJECTOR_REPO]
    projector = files.pop("mmproj-model-f16.gguf")
    first = pull(f"hf.co/{ONE_PROJECTOR_REPO}").model
    assert first.mmproj is None
    assert "mmproj" not in manifest_of(first.name)

    files["mmproj-model-f16.gguf"] = projector
    vision_hub.downloads.clear()
    again = pull(f"hf.co/{ONE_PROJECTOR_REPO}")
    assert not again.up_to_date and again.model.mmproj is not None
    assert [d.path for d in vision_hub.downloads] == [f"/cdn/{projector.sha256}"]
    assert again.model.path.read_bytes() == first.path.read_bytes()


def test_a_corrupted_projector_leaves_no_model(
    vision_hub: FakeHub, projectors: dict[str, Path]
) -> None:
    blob = vision_hub.repos[ONE_PROJECTOR_REPO]["mmproj-model-f16.gguf"]
    blob.advertised_sha256 = "0" * 64
    with pytest.raises(PullError, match=r"mmproj-model-f16\.gguf arrived corrupted"):
        pull(f"hf.co/{ONE_PROJECTOR_REPO}")
    assert registry.store().entries() == []


def test_the_cli_says_which_projector_came_with_the_model(vision_hub: FakeHub) -> None:
    result = CliRunner().invoke(cli, ["pull", f"hf.co/{VISION_REPO}:BF16"])
    # The repo has no BF16 model: the error names the model, not the projector.
    assert result.exit_code == 1 and "no .gguf file for 'BF16'" in result.output
    result = CliRunner().invoke(
        cli, ["pull", f"hf.co/{ONE_PROJECTOR_REPO}"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "With the repo's vision projector, mmproj-model-f16.gguf." in result.output
    assert "with its vision projector (" in result.output and "it takes images" in result.output


# --- a local pair ---------------------------------------------------------------------------


def test_a_local_model_and_projector_are_imported_as_a_pair(
    tiny_files: dict[str, Path], projectors: dict[str, Path], tmp_path: Path
) -> None:
    gguf, mmproj = tiny_files["Tiny-1B-Q8_0.gguf"], projectors["mmproj-F16.gguf"]
    model = pull(str(gguf), name="pair", mmproj=mmproj).model
    assert model.mmproj is not None and model.mmproj.sha256 == sha256_of(mmproj)
    assert model.mmproj.source == f"file:{mmproj.resolve()}"
    assert registry.resolve("pair") == registry.ModelRef("pair", model.path, model.mmproj.path)

    result = CliRunner().invoke(
        cli, ["pull", str(gguf), "--name", "pair2", "--mmproj", str(mmproj)]
    )
    assert result.exit_code == 0, result.output
    assert "with its vision projector" in result.output

    with pytest.raises(PullError, match="is not a multimodal projector"):
        pull(str(gguf), name="swapped", mmproj=tiny_files["Tiny-1B-Q2_K.gguf"])
    with pytest.raises(PullError, match=r"is a multimodal projector \(mmproj\), not a model"):
        pull(str(mmproj), name="swapped")
    with pytest.raises(PullError, match="no such file"):
        pull(str(gguf), name="swapped", mmproj=tmp_path / "missing.gguf")
    with pytest.raises(PullSourceError, match=r"goes with a local \.gguf model"):
        pull("hf.co/org/repo", mmproj=mmproj)
    assert registry.store().get("swapped") is None
    assert list((hearth_home() / "models" / ".partial").iterdir()) == []


def test_the_store_keeps_removes_and_drops_the_projector(
    tiny_files: dict[str, Path], projectors: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    gguf, mmproj = tiny_files["Tiny-1B-Q8_0.gguf"], projectors["mmproj-F16.gguf"]
    model = pull(str(gguf), name="pair", mmproj=mmproj).model
    assert model.mmproj is not None

    copied = registry.copy_model("pair", "pair-copy")
    assert copied.mmproj is not None and copied.mmproj.sha256 == model.mmproj.sha256
    assert copied.mmproj.path != model.mmproj.path and copied.mmproj.path.is_file()

    # Imported again without one: the old projector goes.
    again = pull(str(gguf), name="pair").model
    assert again.mmproj is None and not model.mmproj.path.exists()

    # A projector gone from disk leaves the model listed, without images.
    copied.mmproj.path.unlink()
    with caplog.at_level("WARNING"):
        entry = registry.find("pair-copy")
    assert entry.mmproj is None and "takes no images" in caplog.text

    registry.store().remove("pair-copy")
    pull(str(gguf), name="pair", mmproj=mmproj)
    projector_file = registry.store().mmproj_path("pair")
    assert projector_file.is_file()
    registry.store().remove("pair")
    assert not projector_file.exists()


def test_show_names_the_projector(tiny_files: dict[str, Path], projectors: dict[str, Path]) -> None:
    pull(str(tiny_files["Tiny-1B-Q8_0.gguf"]), name="pair", mmproj=projectors["mmproj-F16.gguf"])
    result = CliRunner().invoke(cli, ["show", "pair"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("images"))
    assert str(registry.store().mmproj_path("pair")) in line and "yes" in line
    plain = CliRunner().invoke(cli, ["show", "smollm2:135m"])
    assert "images" not in plain.output


# --- Ollama ---------------------------------------------------------------------------------


@pytest.fixture()
def oci(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    with running_registry(fake):
        monkeypatch.setenv("HEARTH_OLLAMA_REGISTRY", fake.url)
        yield fake


def test_an_ollama_pull_keeps_the_projector_layer(
    oci: FakeRegistry, tiny_files: dict[str, Path], projectors: dict[str, Path]
) -> None:
    mmproj = projectors["mmproj-F16.gguf"]
    oci.add_ollama_model("library/llava", "tiny", tiny_files["Tiny-1B-Q2_K.gguf"], projector=mmproj)
    notes = Notes()
    model = pull("llava:tiny", reporter=notes).model
    assert model.mmproj is not None and model.mmproj.sha256 == sha256_of(mmproj)
    assert model.mmproj.path.read_bytes() == mmproj.read_bytes()
    assert any("vision projector" in note for note in notes.notes)
    assert registry.resolve("llava:tiny").mmproj_path == model.mmproj.path
    downloads = len(oci.downloads)
    assert pull("llava:tiny").up_to_date and len(oci.downloads) == downloads


def test_the_ollama_store_reports_the_projector_in_place(
    tmp_path: Path, tiny_files: dict[str, Path], projectors: dict[str, Path]
) -> None:
    root = tmp_path / "ollama-models"  # OLLAMA_MODELS, set by the root conftest
    mmproj = projectors["mmproj-Q8_0.gguf"]
    ollama_store(root, "llava", "tiny", tiny_files["Tiny-1B-Q2_K.gguf"], projector=mmproj)
    ollama_store(root, "plain", "latest", tiny_files["Tiny-1B-Q8_0.gguf"])
    blob = root / "blobs" / f"sha256-{sha256_of(mmproj)}"
    entry = registry.find("llava:tiny")
    assert entry.in_ollama_store and entry.mmproj_path == blob  # the blob itself: no copy
    assert registry.resolve("llava:tiny").mmproj_path == blob
    assert registry.find("plain:latest").mmproj_path is None
    assert registry.resolve("plain").mmproj_path is None


# --- the server -----------------------------------------------------------------------------


@pytest.mark.server
def test_the_server_gives_a_stored_model_its_projector(
    tmp_path: Path, projectors: dict[str, Path]
) -> None:
    from tests.server.conftest import start_server
    from tests.server.media_helpers import png

    pull(
        str(registry.embedded_model_path()),
        name="smol-vision",
        mmproj=projectors["mmproj-F16.gguf"],
    )
    image = base64.b64encode(png(16, 16, lambda x, y: (255, 0, 0))).decode()
    env = {"HEARTH_HOME": str(hearth_home())}
    args = ["--flash-attn", "off", "--ctx-size", "512", "--parallel", "1"]
    with (
        start_server(tmp_path / "server", *args, env=env) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as http,
    ):
        # Not loaded yet: the capabilities come from the registry's entry.
        card = http.get("/v1/models/smol-vision").json()
        assert "vision" in card["capabilities"]
        assert "vision" not in http.get("/v1/models/smollm2:135m").json()["capabilities"]
        content = [
            {"type": "text", "text": "What is in the picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        ]
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
        answer = http.post("/v1/chat/completions", json={"model": "smol-vision", **body})
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["prompt_tokens"] > 64  # the image's 64 positions
        refused = http.post("/v1/chat/completions", json={"model": "smollm2:135m", **body})
        assert refused.status_code == 400 and "does not take images" in refused.text
