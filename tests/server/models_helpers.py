"""Helpers for the many-models server tests: which second model to use, and a small client."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from hearth.models import registry
from tests.server.conftest import HearthServer

HELLO = [{"role": "user", "content": "Say hello."}]


def served_models(tmp: Path) -> tuple[list[str], str, str]:
    """(startup flags, the startup model's id, the other model's id)."""
    if "gemma3:270m" in registry.available_ids():
        return [], registry.DEFAULT_MODEL_ID, "gemma3:270m"
    copy = tmp / "smollm2-copy.gguf"
    shutil.copyfile(registry.embedded_model_path(), copy)
    return ["--model", str(copy)], "smollm2-copy", registry.DEFAULT_MODEL_ID


class Multi:
    def __init__(self, server: HearthServer, startup: str, other: str) -> None:
        self.server = server
        self.startup = startup
        self.other = other

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.server.base_url}{path}", timeout=60, **kwargs)

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}{path}", json=body, timeout=60, **kwargs)

    def ps(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        response = self.get("/api/ps", **kwargs)
        assert response.status_code == 200, response.text
        return {m["name"]: m for m in response.json()["models"]}

    def rss_kib(self) -> int:
        """The server's and its runners' resident memory."""
        return self.server.rss_kib()

    def loads_of(self, name: str) -> int:
        return self.server.log().count(f"Loading {name}\n")
