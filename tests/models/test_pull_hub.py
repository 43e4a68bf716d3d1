"""`hearth pull hf.co/...` against the loopback hub: the real SmolLM2 file travels through
huggingface_hub's HEAD, redirect and ranged GETs into the store."""

from __future__ import annotations

import hashlib
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hearth.models import registry
from hearth.models.gguf_info import read_gguf_info
from hearth.models.pull import PullError, PullReporter, pull
from hearth.settings import hearth_home
from tests.models.conftest import SMOL_FILE, SMOL_REPO, TINY_REPO
from tests.models.fake_hub import COMMIT, FakeHub

SMOL_NAME = f"hf.co/{SMOL_REPO}:Q4_1"


@dataclass
class Recorder(PullReporter):
    notes: list[str] = field(default_factory=list)
    transfers: list[tuple[int | None, int]] = field(default_factory=list)
    received: int = 0
    ended: int = 0

    def note(self, message: str) -> None:
        self.notes.append(message)

    def start_transfer(self, description: str, total: int | None, completed: int) -> None:
        self.transfers.append((total, completed))

    def advance(self, size: int) -> None:
        self.received += size

    def end_transfer(self) -> None:
        self.ended += 1


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def models_dir() -> Path:
    return hearth_home() / "models"


def store_files() -> list[str]:
    """What the store holds besides its staging folder."""
    return sorted(p.name for p in models_dir().iterdir() if p.name != ".partial")


def partial_files() -> list[Path]:
    return sorted((models_dir() / ".partial").iterdir())


def test_pull_by_quant_downloads_checks_and_lists_the_model(hub: FakeHub) -> None:
    reporter = Recorder()
    result = pull(f"hf.co/{SMOL_REPO}:q4_1", reporter=reporter)

    smol = registry.embedded_model_path()
    assert result.model.name == SMOL_NAME
    assert not result.up_to_date
    assert result.model.sha256 == sha256_of(smol)
    assert sha256_of(result.model.path) == sha256_of(smol)
    assert result.model.source == f"hf.co/{SMOL_REPO}/{SMOL_FILE}@{COMMIT}"
    # One whole download, reported from 0 to the end.
    assert [(d.range_start, d.status) for d in hub.downloads] == [(0, 200)]
    assert reporter.transfers == [(smol.stat().st_size, 0)]
    assert reporter.received == smol.stat().st_size and reporter.ended == 1
    assert "blobs=true" in hub.api_calls[0]  # the listing with LFS sha256 was asked for

    assert SMOL_NAME in registry.available_ids()
    assert registry.resolve(SMOL_NAME) == registry.ModelRef(SMOL_NAME, result.model.path)
    assert read_gguf_info(result.model.path).quantization == "Q4_1"
    assert partial_files() == []

    again = pull(f"hf.co/{SMOL_REPO}:Q4_1")
    assert again.up_to_date and len(hub.downloads) == 1


def test_pull_without_quant_picks_q4_k_m_and_says_so(hub: FakeHub) -> None:
    reporter = Recorder()
    result = pull(f"hf.co/{TINY_REPO}", reporter=reporter)
    assert result.model.name == f"hf.co/{TINY_REPO}:Q4_K_M"
    assert sha256_of(result.model.path) == hub.repos[TINY_REPO]["Tiny-1B-Q4_K_M.gguf"].sha256
    assert reporter.notes[0].startswith("Picked Tiny-1B-Q4_K_M.gguf (the default quantization")
    assert "Q2_K, Q8_0" in reporter.notes[0]


def test_pull_a_named_file(hub: FakeHub) -> None:
    result = pull(f"https://huggingface.co/{TINY_REPO}/Tiny-1B-Q8_0.gguf")
    assert result.model.name == f"hf.co/{TINY_REPO}:Q8_0"
    assert sha256_of(result.model.path) == hub.repos[TINY_REPO]["Tiny-1B-Q8_0.gguf"].sha256


def test_a_dropped_connection_resumes_with_a_range_request(hub: FakeHub) -> None:
    cut = 40_000_000
    hub.drop_after = cut
    reporter = Recorder()
    result = pull(f"hf.co/{SMOL_REPO}:Q4_1", reporter=reporter)

    # It asks for the rest from the last byte it wrote (huggingface_hub writes in 10 MiB chunks).
    [(first_start, first_status), (resumed_from, status)] = [
        (d.range_start, d.status) for d in hub.downloads
    ]
    assert (first_start, first_status, status) == (0, 200, 206)
    assert 0 < resumed_from <= cut
    assert reporter.received == result.model.size_bytes
    assert sha256_of(result.model.path) == sha256_of(registry.embedded_model_path())
    assert partial_files() == []


def test_a_broken_pull_leaves_no_model_and_the_next_one_resumes(hub: FakeHub) -> None:
    cut = 30_000_000
    # The connection drops, and the retry meets an outage: the pull gives up.
    hub.drop_after = cut
    hub.outage_after_drop = True
    with pytest.raises(PullError, match="pull again to resume"):
        pull(f"hf.co/{SMOL_REPO}:Q4_1")

    [(_, first_status), (written, retry_status)] = [
        (d.range_start, d.status) for d in hub.downloads
    ]
    assert (first_status, retry_status) == (200, 503)
    assert store_files() == []  # no model, no manifest
    assert registry.available_ids() == ["smollm2:135m", "gemma3:270m"]
    with pytest.raises(registry.UnknownModelError):
        registry.resolve(SMOL_NAME)
    [partial] = partial_files()
    assert 0 < partial.stat().st_size == written <= cut

    hub.outage = False
    reporter = Recorder()
    result = pull(f"hf.co/{SMOL_REPO}:Q4_1", reporter=reporter)
    assert hub.downloads[-1].range_start == written and hub.downloads[-1].status == 206
    assert f"Resuming {SMOL_FILE} from {written / 1e6:.1f} MB." in reporter.notes
    assert reporter.transfers == [(registry.embedded_model_path().stat().st_size, written)]
    assert sha256_of(result.model.path) == sha256_of(registry.embedded_model_path())
    assert partial_files() == []


def test_a_pull_out_of_disk_space_is_one_clear_line_and_resumes(hub: FakeHub) -> None:
    # A file size limit (RLIMIT_FSIZE) stands in for a full disk: the write fails the same way.
    limit = 20_000_000
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(PullError, match=r"out of disk space writing .* pull again to resume"):
            pull(f"hf.co/{SMOL_REPO}:Q4_1")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert store_files() == []  # no model, no manifest
    [partial] = partial_files()
    written = partial.stat().st_size
    assert 0 < written <= limit

    reporter = Recorder()
    result = pull(f"hf.co/{SMOL_REPO}:Q4_1", reporter=reporter)
    assert any(note.startswith(f"Resuming {SMOL_FILE}") for note in reporter.notes)
    assert sha256_of(result.model.path) == sha256_of(registry.embedded_model_path())
    assert partial_files() == []


def test_a_corrupted_download_is_discarded(hub: FakeHub, tiny_files: dict[str, Path]) -> None:
    # The hub advertises another file's sha256 for these bytes.
    hub.repos[TINY_REPO]["Tiny-1B-Q4_K_M.gguf"].advertised_sha256 = "ab" * 32
    with pytest.raises(PullError, match="arrived corrupted"):
        pull(f"hf.co/{TINY_REPO}:Q4_K_M")
    assert store_files() == []
    assert partial_files() == []


def test_hub_errors_are_one_clear_line(hub: FakeHub) -> None:
    with pytest.raises(PullError, match="no model hearth-test/Nope"):
        pull("hf.co/hearth-test/Nope")
    with pytest.raises(
        PullError, match=re.escape("no .gguf file for 'IQ1_S'; the repo has Q2_K, Q4_K_M, Q8_0")
    ):
        pull(f"hf.co/{TINY_REPO}:IQ1_S")
    with pytest.raises(PullError, match=re.escape("has no file Tiny-1B-F16.gguf")):
        pull(f"hf.co/{TINY_REPO}/Tiny-1B-F16.gguf")


def test_an_unreachable_hub_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.server.conftest import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PullError, match=re.escape("cannot reach the hub at http://127.0.0.1:")):
        pull(f"hf.co/{TINY_REPO}")
