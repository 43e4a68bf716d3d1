"""Every test gets a fresh home and none of the developer's HEARTH_* settings (httpx's
clean_environ, llm's LLM_USER_PATH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEARTH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "hearth-home"))
    # Never the developer's own Ollama store (models/ollama_store.py reads it).
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    # A pull by Ollama or Docker name never reaches the internet: port 9 refuses.
    monkeypatch.setenv("HEARTH_OLLAMA_REGISTRY", "http://127.0.0.1:9")
    monkeypatch.setenv("HEARTH_REGISTRIES", "docker.io=http://127.0.0.1:9")
