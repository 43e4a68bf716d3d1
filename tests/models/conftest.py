"""Model-store tests: a fresh Hearth home (the root conftest), a fresh Hugging Face home, and
no hub but the loopback fake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.models.registry import embedded_model_path
from tests.models.fake_hub import FakeHub, HubBlob, running_hub, tiny_gguf

SMOL_REPO = "hearth-test/SmolLM2-135M-Instruct-GGUF"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_REPO = "hearth-test/Tiny-GGUF"


@pytest.fixture(autouse=True)
def hf_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small whole GGUFs named like a quantized repo's files."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    names = ["Tiny-1B-Q2_K.gguf", "Tiny-1B-Q4_K_M.gguf", "Tiny-1B-Q8_0.gguf"]
    return {name: tiny_gguf(folder / name, seed=seed) for seed, name in enumerate(names)}


@pytest.fixture()
def hub(tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(
        repos={
            SMOL_REPO: {
                SMOL_FILE: HubBlob(path=embedded_model_path()),
                "README.md": HubBlob(data=b"# SmolLM2 GGUF\n", lfs=False),
            },
            TINY_REPO: {name: HubBlob(path=path) for name, path in tiny_files.items()},
        }
    )
    with running_hub(fake):
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake
