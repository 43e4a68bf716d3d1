"""Models from everywhere, in process: OCI names, Ollama's store read in place, pulls from the
loopback registry (tests/models/fake_registry.py) in Ollama's and Docker's forms. The real
server's side is in test_ollama_sources.py."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hearth.cli.main import cli
from hearth.models import registry
from hearth.models.model_names import OciReference, parse_reference
from hearth.models.pull import PullError, PullNotFoundError, PullReporter, parse_source, pull
from hearth.models.store import ModelStore
from hearth.settings import hearth_home
from tests.models.fake_registry import (
    GO_TEMPLATE,
    FakeRegistry,
    ollama_store,
    running_registry,
)

JINJA = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("qwen3", OciReference("registry.ollama.ai", "library/qwen3", "latest", False)),
        ("qwen3:0.6b", OciReference("registry.ollama.ai", "library/qwen3", "0.6b", True)),
        ("user/model:q4", OciReference("registry.ollama.ai", "user/model", "q4", True)),
        (
            "registry.ollama.ai/library/llama3.2:1b",
            OciReference("registry.ollama.ai", "library/llama3.2", "1b", True),
        ),
        ("docker.io/ai/smollm2", OciReference("docker.io", "ai/smollm2", "latest", False)),
        ("index.docker.io/ai/smollm2:360M", OciReference("docker.io", "ai/smollm2", "360M", True)),
        ("localhost:5000/team/m:v1", OciReference("localhost:5000", "team/m", "v1", True)),
    ],
)
def test_parse_reference(text: str, expected: OciReference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "qwen3:", "x:bad tag", "https://x.io/a/b", "a//b"])
def test_parse_reference_refuses(text: str) -> None:
    assert parse_reference(text) is None


def test_parse_source_keeps_hf_and_paths_apart_from_oci_names() -> None:
    assert not isinstance(parse_source("hf.co/org/repo:Q4_K_M"), OciReference)
    assert not isinstance(parse_source("./model.gguf"), OciReference)
    assert parse_source("qwen3:0.6b") == parse_reference("qwen3:0.6b")


# --- Ollama's store, read in place ------------------------------------------------------------


@pytest.fixture()
def ollama_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ollama-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def test_ollama_store_models_are_listed_served_in_place_and_never_removed(
    ollama_root: Path, tiny_files: dict[str, Path]
) -> None:
    params = {"temperature": 0.2, "stop": ["<|im_end|>"], "num_ctx": 1024, "repeat_penalty": 1.1}
    blob = ollama_store(
        ollama_root,
        "tiny",
        "q2",
        tiny_files["Tiny-1B-Q2_K.gguf"],
        system="Be brief.",
        params=params,
    )
    ollama_store(ollama_root, "other", "latest", tiny_files["Tiny-1B-Q8_0.gguf"], namespace="me")

    entry = registry.find("tiny:q2")
    assert entry.in_ollama_store and not entry.bundled
    assert entry.path == blob and entry.sha256 == blob.name.removeprefix("sha256-")
    assert registry.resolve("tiny:q2").path == blob  # the blob itself: no copy
    assert "me/other:latest" in registry.available_ids()
    # No tag means `latest`, as in Ollama.
    assert registry.find("me/other").name == "me/other:latest"
    assert registry.resolve("me/other").path == registry.find("me/other:latest").path
    with pytest.raises(registry.UnknownModelError, match="unknown model 'tiny'"):
        registry.resolve("tiny")  # only tiny:q2 exists
    defaults = entry.defaults
    assert defaults is not None and defaults.system == "Be brief."
    assert defaults.template is None  # Ollama's Go template is never rendered
    preset = defaults.as_preset("tiny:q2")
    assert preset.system == "Be brief." and preset.ctx_size == 1024
    assert preset.params.temperature == 0.2 and preset.params.stop == ["<|im_end|>"]

    with pytest.raises(registry.NotRemovableError, match="ollama rm"):
        registry.removable("tiny:q2")
    result = CliRunner().invoke(cli, ["rm", "tiny:q2", "--force"])
    assert result.exit_code == 1 and "Ollama's store" in result.output
    assert blob.is_file()

    listing = CliRunner().invoke(cli, ["list"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0
    assert any(line.split()[:2] == ["tiny:q2", "(ollama)"] for line in listing.output.splitlines())
    assert not list((hearth_home() / "models").glob("*.gguf"))


def test_a_hearth_store_name_wins_and_the_store_can_be_turned_off(
    ollama_root: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ollama_store(ollama_root, "tiny", "q2", tiny_files["Tiny-1B-Q2_K.gguf"])
    pull(str(tiny_files["Tiny-1B-Q8_0.gguf"]), name="tiny:q2")
    entry = registry.find("tiny:q2")
    assert (
        not entry.in_ollama_store and [e.name for e in registry.list_models()].count("tiny:q2") == 1
    )
    registry.store().remove("tiny:q2")
    assert registry.find("tiny:q2").in_ollama_store
    monkeypatch.setenv("HEARTH_NO_OLLAMA_STORE", "1")
    with pytest.raises(registry.UnknownModelError):
        registry.find("tiny:q2")


def test_an_unreadable_manifest_is_skipped(ollama_root: Path, tiny_files: dict[str, Path]) -> None:
    ollama_store(ollama_root, "tiny", "q2", tiny_files["Tiny-1B-Q2_K.gguf"])
    broken = ollama_root / "manifests" / "registry.ollama.ai" / "library" / "broken"
    broken.mkdir(parents=True)
    (broken / "latest").write_text("{not json")
    missing = ollama_root / "manifests" / "registry.ollama.ai" / "library" / "gone"
    missing.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "0" * 64}
    (missing / "latest").write_text(json.dumps({"layers": [layer]}))
    names = registry.available_ids()
    assert "tiny:q2" in names and "broken:latest" not in names and "gone:latest" not in names


# --- pulls from the loopback registry ---------------------------------------------------------


class Recorder(PullReporter):
    def __init__(self) -> None:
        self.transfers: list[tuple[int | None, int]] = []
        self.completed = 0
        self.verified = False

    def start_transfer(self, description: str, total: int | None, completed: int) -> None:
        self.transfers.append((total, completed))
        self.completed = completed

    def advance(self, size: int) -> None:
        self.completed += size

    def verifying(self) -> None:
        self.verified = True


@pytest.fixture()
def oci(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    with running_registry(fake):
        monkeypatch.setenv("HEARTH_OLLAMA_REGISTRY", fake.url)
        monkeypatch.setenv("HEARTH_REGISTRIES", f"docker.io={fake.url}")
        yield fake


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_an_ollama_model_with_its_layers(
    oci: FakeRegistry, tiny_files: dict[str, Path]
) -> None:
    gguf = tiny_files["Tiny-1B-Q4_K_M.gguf"]
    oci.add_ollama_model(
        "library/tiny", "q4", gguf, system="Be brief.", params={"top_k": 20}, license="MIT"
    )
    reporter = Recorder()
    result = pull("tiny:q4", reporter=reporter)
    model = result.model
    assert model.name == "tiny:q4" and model.sha256 == _sha(gguf)
    assert model.source == "registry.ollama.ai/library/tiny:q4"
    assert model.path.read_bytes() == gguf.read_bytes()
    assert reporter.verified and reporter.completed == gguf.stat().st_size
    assert model.defaults is not None
    assert (model.defaults.system, model.defaults.params, model.defaults.license) == (
        "Be brief.",
        {"top_k": 20},
        "MIT",
    )
    assert model.defaults.template is None  # the Go template layer stays out
    assert registry.find("tiny:q4").defaults == model.defaults  # read back from the manifest
    assert pull("registry.ollama.ai/library/tiny:q4", name="tiny:q4").up_to_date


def test_pull_a_docker_artifact_through_the_token_flow(
    oci: FakeRegistry, tiny_files: dict[str, Path]
) -> None:
    gguf = tiny_files["Tiny-1B-Q8_0.gguf"]
    oci.add_docker_model(
        "ai/tiny", "latest", gguf, context_size=2048, template=JINJA, license="Apache"
    )
    model = pull("docker.io/ai/tiny").model
    assert model.name == "docker.io/ai/tiny" and model.sha256 == _sha(gguf)
    assert oci.tokens_issued and oci.tokens_issued[0] == "repository:ai/tiny:pull"
    assert not oci.authorized_on_blob_host  # the token never went to the blob host
    assert model.defaults is not None
    assert model.defaults.params == {"num_ctx": 2048} and model.defaults.template == JINJA
    assert model.defaults.license == "Apache"


def test_an_unknown_model_is_not_found(oci: FakeRegistry) -> None:
    with pytest.raises(PullNotFoundError, match="no model library/nothing:latest"):
        pull("nothing")


def test_a_wrong_digest_leaves_nothing(oci: FakeRegistry, tiny_files: dict[str, Path]) -> None:
    oci.add_ollama_model(
        "library/bad", "latest", tiny_files["Tiny-1B-Q2_K.gguf"], wrong_digest=True
    )
    with pytest.raises(PullError, match="arrived corrupted"):
        pull("bad")
    store = ModelStore(hearth_home())
    assert store.get("bad") is None
    assert not list(store.staging_dir.iterdir())


def test_a_blob_of_another_size_is_refused(oci: FakeRegistry, tiny_files: dict[str, Path]) -> None:
    gguf = tiny_files["Tiny-1B-Q2_K.gguf"]
    digest = oci.add_ollama_model(
        "library/short", "latest", gguf, declared_size=gguf.stat().st_size - 100
    )
    with pytest.raises(PullError, match="whose size is"):
        pull("short")
    assert len(oci.downloads_of(digest)) == 4  # the first try and three more
    assert ModelStore(hearth_home()).get("short") is None


def test_a_dropped_connection_resumes_within_the_pull(oci: FakeRegistry) -> None:
    smol = registry.embedded_model_path()
    digest = oci.add_ollama_model("library/smol", "latest", smol)
    oci.drop_after = 10 << 20
    model = pull("smol").model
    assert model.sha256 == _sha(smol)
    assert [(d.range_start, d.status) for d in oci.downloads_of(digest)] == [
        (0, 200),
        (10 << 20, 206),
    ]


def test_a_pull_cut_off_resumes_on_the_next(oci: FakeRegistry) -> None:
    smol = registry.embedded_model_path()
    digest = oci.add_ollama_model("library/smol", "latest", smol)
    oci.drop_after, oci.outage_after_drop = 20 << 20, True
    with pytest.raises(PullError, match="pull again to resume"):
        pull("smol")
    partial = ModelStore(hearth_home()).staging_dir / f"{digest.removeprefix('sha256:')}.part"
    assert partial.stat().st_size == 20 << 20
    oci.outage = False
    reporter = Recorder()
    model = pull("smol", reporter=reporter).model
    assert model.sha256 == _sha(smol) and not partial.exists()
    assert reporter.transfers[0] == (smol.stat().st_size, 20 << 20)
    assert oci.downloads_of(digest)[-1].range_start == 20 << 20


def test_go_template_text_is_what_the_fixture_serves() -> None:
    # The fixture's template layer is Go's syntax, which Hearth must recognise and refuse.
    from hearth.models.defaults import GoTemplateError, check_jinja_template

    with pytest.raises(GoTemplateError, match="Go's template syntax"):
        check_jinja_template(GO_TEMPLATE)
    assert check_jinja_template(JINJA) == JINJA
    with pytest.raises(ValueError, match="not valid Jinja"):
        check_jinja_template("{% for x in %}")


# --- hearth create ------------------------------------------------------------------------------


def test_hearth_create_from_a_model_and_from_a_file(
    tiny_files: dict[str, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    gguf = tiny_files["Tiny-1B-Q2_K.gguf"]
    made = runner.invoke(
        cli,
        ["create", "base:q2", "--from", str(gguf), "--system", "Be brief.", "-p", "top_k=20"],
    )
    assert made.exit_code == 0, made.output
    assert "using existing layer sha256:" in made.output and "creating system layer" in made.output
    template = tmp_path / "chat.jinja"
    template.write_text(JINJA)
    derived = runner.invoke(
        cli,
        [
            "create",
            "derived:q2",
            "--from",
            "base:q2",
            "--template",
            str(template),
            "-p",
            "temperature=0.5",
            "-p",
            "stop=<end>",
            "-p",
            "stop=<stop>",
        ],
    )
    assert derived.exit_code == 0, derived.output
    model = registry.find("derived:q2")
    assert model.defaults is not None
    assert model.defaults.system == "Be brief."  # inherited from base:q2
    assert model.defaults.params == {"top_k": 20, "temperature": 0.5, "stop": ["<end>", "<stop>"]}
    assert model.defaults.template == JINJA
    assert model.sha256 == _sha(gguf)
    assert model.path is not None and model.path.stat().st_nlink >= 2  # linked, not copied

    template.write_text(GO_TEMPLATE)
    refused = runner.invoke(cli, ["create", "go", "--from", "base:q2", "--template", str(template)])
    assert refused.exit_code == 1 and "Go's template syntax" in refused.output
    unknown = runner.invoke(cli, ["create", "x", "--from", "nothing:here"])
    assert unknown.exit_code == 1 and "unknown model" in unknown.output
    bundled = runner.invoke(cli, ["create", "smollm2:135m", "--from", "base:q2"])
    assert bundled.exit_code == 1 and "bundled model" in bundled.output


def test_hearth_create_quantizes() -> None:
    from hearth.models.gguf_info import read_gguf_info

    made = CliRunner().invoke(
        cli, ["create", "smol:q8", "--from", "smollm2:135m", "--quantize", "q8_0"]
    )
    assert made.exit_code == 0, made.output
    assert "quantizing model to Q8_0" in made.output and "creating new layer sha256:" in made.output
    model = registry.find("smol:q8")
    assert model.path is not None and read_gguf_info(model.path).quantization == "Q8_0"
    assert model.sha256 == _sha(model.path)


def test_hearth_create_offers_every_type_the_quantizer_has() -> None:
    # The CLI lists the types itself (its imports stay lazy); they must not drift apart.
    from hearth.cli.create import command
    from hearth.engine.quantize import QUANT_TYPES

    option = next(p for p in command.params if p.name == "quantize")
    assert isinstance(option.type, click.Choice)
    assert set(option.type.choices) == set(QUANT_TYPES)
    assert {"q4_k_m", "q4_k_s", "q8_0"} <= set(QUANT_TYPES)  # Ollama's docs/api.md table
