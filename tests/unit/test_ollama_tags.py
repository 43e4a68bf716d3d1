"""/api/tags lists what it can read: a broken or vanished store file costs only its own line."""

from __future__ import annotations

import logging

import pytest

from hearth.models import registry
from hearth.server.ollama.serving import list_tags


def test_a_broken_store_model_is_left_out_of_the_tags_with_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = registry.store()
    staged = store.temp_path(".gguf")
    staged.write_bytes(b"not a model at all")
    store.install("broken:latest", staged, source="test", sha256="00" * 32)
    listed_before = {tag.name for tag in list_tags().models}

    with caplog.at_level(logging.WARNING, logger="hearth.server.ollama.serving"):
        names = {tag.name for tag in list_tags().models}
    assert "broken:latest" not in names
    assert "smollm2:135m" in names and names == listed_before
    assert "Not listing broken:latest" in caplog.text

    # Deleted between the store's listing and the header read: no line and no warning.
    listed = registry.list_models()
    store.model_path("broken:latest").unlink()
    monkeypatch.setattr(registry, "list_models", lambda: listed)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hearth.server.ollama.serving"):
        assert {tag.name for tag in list_tags().models} == names
    assert "Not listing" not in caplog.text
