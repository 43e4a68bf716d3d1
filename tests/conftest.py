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
