"""Ollama's model store, read in place: the models a person already pulled with Ollama.

`$OLLAMA_MODELS`, else `~/.ollama/models`, holds
    manifests/<registry>/<namespace>/<name>/<tag>   an OCI image manifest (JSON)
    blobs/sha256-<hex>                              each layer, by digest
The layer `application/vnd.ollama.image.model` is the GGUF, served from its blob as it is: no
copy; `application/vnd.ollama.image.projector`, when there is one (LLaVA-style models), is its
multimodal projector, served from its blob too. `system` and `params` become the model's
defaults (models/defaults.py). The `template` layer is Go's text/template, which Hearth does not
render: chat uses the GGUF's own Jinja template (`tokenizer.chat_template`), or, for a GGUF
without one, the fallback of models/chat_template.py (ChatML, or Gemma's turns for a Gemma).

Hearth never writes here: `hearth rm` refuses these models. `HEARTH_NO_OLLAMA_STORE=1` (or
`hearth serve --no-ollama-store`) leaves the store unread.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hearth.models.defaults import ModelDefaults
from hearth.models.model_names import OLLAMA_REGISTRY
from hearth.models.store import Projector

__all__ = [
    "LAYER_LICENSE",
    "LAYER_MODEL",
    "LAYER_PARAMS",
    "LAYER_PROJECTOR",
    "LAYER_SYSTEM",
    "LAYER_TEMPLATE",
    "OllamaModel",
    "OllamaStore",
    "disabled",
    "locate",
]

logger = logging.getLogger(__name__)

LAYER_MODEL = "application/vnd.ollama.image.model"
LAYER_TEMPLATE = "application/vnd.ollama.image.template"
LAYER_SYSTEM = "application/vnd.ollama.image.system"
LAYER_PARAMS = "application/vnd.ollama.image.params"
LAYER_LICENSE = "application/vnd.ollama.image.license"
LAYER_PROJECTOR = "application/vnd.ollama.image.projector"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_TEXT_LIMIT = 1 << 20  # a system prompt or params layer bigger than this is not one


@dataclass(frozen=True, slots=True)
class OllamaModel:
    name: str  # as `ollama list` shows it: qwen3:0.6b, user/model:tag, host/ns/model:tag
    path: Path  # the GGUF blob
    sha256: str
    size_bytes: int
    modified: datetime
    defaults: ModelDefaults | None
    # Ollama's Go template, kept for `show`; never rendered.
    go_template: str | None
    mmproj: Projector | None = None


def disabled() -> bool:
    return (os.environ.get("HEARTH_NO_OLLAMA_STORE") or "").lower() in ("1", "true", "yes", "on")


def locate() -> OllamaStore | None:
    """The Ollama store to read, or None when turned off or absent."""
    if disabled():
        return None
    root = os.environ.get("OLLAMA_MODELS") or str(Path.home() / ".ollama" / "models")
    store = OllamaStore(Path(root).expanduser())
    return store if (store.root / "manifests").is_dir() else None


def _display_name(parts: tuple[str, ...]) -> str | None:
    """manifests/<registry>/<namespace…>/<name>/<tag> to Ollama's name."""
    if len(parts) < 4:
        return None
    host, *repository, tag = parts
    if host == OLLAMA_REGISTRY:
        if repository[0] == "library":
            repository = repository[1:]
        return f"{'/'.join(repository)}:{tag}"
    return f"{host}/{'/'.join(repository)}:{tag}"


class OllamaStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, digest: str) -> Path | None:
        match = _DIGEST.fullmatch(digest)
        return self.root / "blobs" / f"sha256-{match.group(1)}" if match else None

    def _text(self, layer: dict[str, Any]) -> str | None:
        path = self.blob_path(str(layer.get("digest", "")))
        if path is None or int(layer.get("size", 0)) > _TEXT_LIMIT:
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _read(self, manifest: Path) -> OllamaModel | None:
        """The model a manifest describes. Cached by the manifest's mtime and size: every
        request's name check lists the models, and blobs never change (content-addressed)."""
        try:
            stat = manifest.stat()
        except OSError:
            return None
        model = _read_manifest(self.root, manifest, stat.st_mtime_ns, stat.st_size)
        return model if model is not None and model.path.is_file() else None

    def _parse(self, manifest: Path) -> OllamaModel | None:
        name = _display_name(manifest.relative_to(self.root / "manifests").parts)
        if name is None:
            return None
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            layers: list[dict[str, Any]] = [
                layer for layer in data.get("layers", []) if isinstance(layer, dict)
            ]
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("Ignoring the unreadable Ollama manifest %s: %s", manifest, exc)
            return None
        by_type: dict[str, dict[str, Any]] = {}
        for layer in layers:
            by_type.setdefault(str(layer.get("mediaType", "")), layer)
        model = by_type.get(LAYER_MODEL)
        if model is None:  # a safetensors or an adapter-only model: not a GGUF to serve
            return None
        path = self.blob_path(str(model.get("digest", "")))
        if path is None or not path.is_file():
            return None
        params: dict[str, Any] = {}
        if LAYER_PARAMS in by_type:
            try:
                loaded = json.loads(self._text(by_type[LAYER_PARAMS]) or "{}")
                params = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                logger.warning("Ignoring %s's unreadable params layer", name)
        defaults = ModelDefaults(
            system=self._text(by_type[LAYER_SYSTEM]) if LAYER_SYSTEM in by_type else None,
            params=params,
            license=self._text(by_type[LAYER_LICENSE]) if LAYER_LICENSE in by_type else None,
        )
        stat = path.stat()
        return OllamaModel(
            name=name,
            path=path,
            sha256=path.name.removeprefix("sha256-"),
            size_bytes=stat.st_size,
            modified=datetime.fromtimestamp(manifest.stat().st_mtime, UTC),
            defaults=None if defaults.empty else defaults,
            go_template=self._text(by_type[LAYER_TEMPLATE]) if LAYER_TEMPLATE in by_type else None,
            mmproj=self._projector(by_type.get(LAYER_PROJECTOR)),
        )

    def _projector(self, layer: dict[str, Any] | None) -> Projector | None:
        if layer is None:
            return None
        digest = str(layer.get("digest", ""))
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size if path is not None else None
        except OSError:
            size = None
        if path is None or size is None:
            logger.warning("Ignoring the projector %s: its blob is missing", digest)
            return None
        return Projector(path, path.name.removeprefix("sha256-"), size, f"ollama layer {digest}")

    def entries(self) -> list[OllamaModel]:
        """Every GGUF model in the store, by name. The server asks only when the manifests
        changed (registry.ModelIndex); each manifest is parsed once per version (_read)."""
        # os.walk, not Path.rglob, which is several times slower.
        paths = (
            Path(folder, file)
            for folder, _, files in os.walk(self.root / "manifests")
            for file in files
        )
        found = (self._read(path) for path in paths)
        return sorted((m for m in found if m is not None), key=lambda m: m.name.lower())


@functools.lru_cache(maxsize=1024)
def _read_manifest(root: Path, manifest: Path, mtime_ns: int, size: int) -> OllamaModel | None:
    return OllamaStore(root)._parse(manifest)
