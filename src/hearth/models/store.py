"""The model store: GGUF files that were pulled, imported or assembled, each with a manifest.

Layout under `$HEARTH_HOME/models` (docs/models.md):

    <key>.gguf          the model
    <key>.json          its manifest: name, source, sha256, size, pulled_at
    mmproj/<key>.gguf   its multimodal projector, when it has one (the manifest's "mmproj")
    .partial/           downloads in progress (resumable) and temporary copies

A temporary copy is `.partial/<pid>-<uuid>.<suffix>`: the process writing it is in its name, so
a copy left by a killed import (`kill -9` during `hearth pull ./file.gguf`) is known for an
orphan once that process is gone, and `clean_staging` deletes it. A download's
`<sha256>.part` is kept so that the next pull resumes it, but not for ever: one untouched for
`PART_MAX_AGE_S` (7 days) is deleted, and so are the oldest idle ones while all of them together
pass `PART_MAX_BYTES` (16 GiB).

`<key>` is the lower-cased name, percent-encoded into one file name (`hf.co/Org/Repo:Q4_K_M` ->
`hf.co%2forg%2frepo%3aq4_k_m`), so names are case-insensitive as on the hub and never collide.
Every write is a temporary file renamed into place: the projector first, then the model, then
the manifest. A model is listed only when its manifest and file exist, so a broken pull or a
crash leaves no half entry. Projectors live in a folder of their own: no key can name them
(`mmproj-x.gguf` beside the models would be the model `mmproj-x`'s file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hearth.models.defaults import ModelDefaults

__all__ = [
    "PART_MAX_AGE_S",
    "PART_MAX_BYTES",
    "InvalidModelNameError",
    "ModelStore",
    "Projector",
    "StoredModel",
    "check_model_name",
    "file_sha256",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
_MANIFEST_VERSION = 1
PART_MAX_AGE_S = 7 * 24 * 3600
PART_MAX_BYTES = 16 << 30
# A download still being written is never removed for the size bound: its file changes each
# second. Temporary copies without a process id (older Hearths) count as orphans once as idle.
_IDLE_S = 3600
_TEMP_NAME = re.compile(r"(?:(\d+)-)?[0-9a-f]{32}\.\w+")
_PART_NAME = re.compile(r"[0-9a-f]{64}\.part")
# A file name holds 255 bytes; the store's longest is a temp name, `.<key>.gguf.<8 hex>.tmp`.
_MAX_KEY_BYTES = 255 - len("..gguf.12345678.tmp")


class InvalidModelNameError(ValueError):
    pass


def check_model_name(name: str) -> str:
    """A name the store accepts: letters, digits and . _ - / :, not a .gguf path."""
    if not _NAME.fullmatch(name) or "//" in name or name.endswith("/"):
        raise InvalidModelNameError(
            f"invalid model name {name!r}: use letters, digits and . _ - / : "
            "(like smollm2:135m or hf.co/org/repo:Q4_K_M)"
        )
    if name.lower().endswith(".gguf"):
        raise InvalidModelNameError(f"invalid model name {name!r}: a name may not end in .gguf")
    if len(_key(name)) > _MAX_KEY_BYTES:
        raise InvalidModelNameError(
            f"invalid model name {name[:40]!r}…: too long to store (its file name would be "
            f"{len(_key(name))} bytes; at most {_MAX_KEY_BYTES}, each : and / counting 3)"
        )
    return name


@dataclass(frozen=True, slots=True)
class Projector:
    """A multimodal projector (an mmproj GGUF) beside a model: with it, the model takes images."""

    path: Path
    sha256: str
    size_bytes: int
    # Where it came from: the hub's file, a registry layer's digest, a local path.
    source: str


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: str
    path: Path
    source: str
    sha256: str
    size_bytes: int
    pulled_at: datetime
    # System prompt, parameters, template, license: from Ollama's layers or /api/create.
    defaults: ModelDefaults | None = None
    mmproj: Projector | None = None

    @property
    def mmproj_sha256(self) -> str | None:
        return self.mmproj.sha256 if self.mmproj is not None else None


def file_sha256(path: Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def _key(name: str) -> str:
    return quote(name.lower(), safe="-_.").lower()


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with temp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


class ModelStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "models"

    @property
    def staging_dir(self) -> Path:
        """Where downloads and copies are written before they are renamed into the store.

        Inside the store, so the rename never crosses file systems."""
        path = self.root / ".partial"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def temp_path(self, suffix: str = ".tmp") -> Path:
        return self.staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}{suffix}"

    def clean_staging(self, now: float | None = None) -> list[Path]:
        """Delete orphaned temporary copies (their process is gone) and the `.part` downloads
        past the age and size bounds (the module's docstring); the paths deleted."""
        folder = self.root / ".partial"
        if not folder.is_dir():
            return []
        now = time.time() if now is None else now
        removed: list[Path] = []
        parts: list[tuple[float, int, Path]] = []
        for path in folder.iterdir():
            try:
                info = path.stat()
            except OSError:  # gone meanwhile: another process cleaned it or renamed it in
                continue
            idle = now - info.st_mtime
            if (temp := _TEMP_NAME.fullmatch(path.name)) is not None:
                owner = temp.group(1)
                if (owner is None and idle > _IDLE_S) or (
                    owner is not None and not _process_alive(int(owner))
                ):
                    removed.append(path)
            elif _PART_NAME.fullmatch(path.name):
                if idle > PART_MAX_AGE_S:
                    removed.append(path)
                else:
                    parts.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in parts)
        for mtime, size, path in sorted(parts):  # the oldest first
            if total <= PART_MAX_BYTES:
                break
            if now - mtime > 60:  # idle: no pull is writing it
                removed.append(path)
                total -= size
        for path in removed:
            path.unlink(missing_ok=True)
            logger.info("Deleted %s, left by an interrupted pull or copy", path.name)
        return removed

    def model_path(self, name: str) -> Path:
        return self.root / f"{_key(name)}.gguf"

    def mmproj_path(self, name: str) -> Path:
        return self.root / "mmproj" / f"{_key(name)}.gguf"

    def stage_copy(self, path: Path) -> Path:
        """`path` in the staging folder, ready for `install`: a hard link where the file system
        allows one (store files are only ever replaced, never written in place), else a copy."""
        staged = self.temp_path(".gguf")
        try:
            os.link(path, staged)
        except OSError:  # another file system, or links not allowed there
            shutil.copyfile(path, staged)
        return staged

    def _manifest_path(self, name: str) -> Path:
        return self.root / f"{_key(name)}.json"

    def _read_manifest(self, manifest: Path) -> StoredModel | None:
        try:
            data: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
            name = str(data["name"])
            model = StoredModel(
                name=name,
                path=self.model_path(name),
                source=str(data["source"]),
                sha256=str(data["sha256"]),
                size_bytes=int(data["size"]),
                pulled_at=datetime.fromisoformat(str(data["pulled_at"])),
                defaults=ModelDefaults.from_json(data.get("defaults")),
                mmproj=self._read_projector(name, data.get("mmproj")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("Ignoring the unreadable model manifest %s: %s", manifest, exc)
            return None
        if model.path.with_suffix(".json") != manifest:
            logger.warning("Ignoring the model manifest %s: it names %r", manifest, model.name)
            return None
        try:
            if model.path.stat().st_size != model.size_bytes:
                logger.warning("Ignoring %s: its size differs from its manifest", model.path)
                return None
        except FileNotFoundError:
            return None
        return model

    def _read_projector(self, name: str, data: Any) -> Projector | None:
        """The manifest's projector, if it has one whose file is there whole. A projector gone
        missing leaves the model without images rather than out of the list."""
        if data is None:
            return None
        path = self.mmproj_path(name)
        if data["file"] != path.relative_to(self.root).as_posix():
            raise ValueError(f"its projector is {data['file']!r}, not the store's own file")
        projector = Projector(path, str(data["sha256"]), int(data["size"]), str(data["source"]))
        try:
            if path.stat().st_size == projector.size_bytes:
                return projector
        except FileNotFoundError:
            pass
        logger.warning("%s's projector %s is missing or cut short; it takes no images", name, path)
        return None

    def get(self, name: str) -> StoredModel | None:
        return self._read_manifest(self._manifest_path(name))

    def entries(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        models = (self._read_manifest(path) for path in self.root.glob("*.json"))
        return sorted((m for m in models if m is not None), key=lambda m: m.name.lower())

    def install(
        self,
        name: str,
        staged: Path,
        *,
        source: str,
        sha256: str,
        defaults: ModelDefaults | None = None,
        mmproj: Projector | None = None,
    ) -> StoredModel:
        """Move a finished, checked file from the staging folder into the store under `name`;
        `mmproj`, if given, is a projector staged likewise (its path in the staging folder), put
        beside it. A model installed without one loses the projector it had."""
        check_model_name(name)
        path = self.model_path(name)
        stored_mmproj = None
        if mmproj is not None:
            target = self.mmproj_path(name)
            target.parent.mkdir(exist_ok=True)
            size = mmproj.path.stat().st_size
            os.replace(mmproj.path, target)
            stored_mmproj = Projector(target, mmproj.sha256, size, mmproj.source)
        size = staged.stat().st_size
        os.replace(staged, path)
        if defaults is not None and defaults.empty:
            defaults = None
        model = StoredModel(
            name,
            path,
            source,
            sha256,
            size,
            datetime.now(UTC).replace(microsecond=0),
            defaults,
            stored_mmproj,
        )
        manifest: dict[str, Any] = {
            "version": _MANIFEST_VERSION,
            "name": name,
            "source": source,
            "sha256": sha256,
            "size": size,
            "pulled_at": model.pulled_at.isoformat(timespec="seconds"),
        }
        if defaults is not None:
            manifest["defaults"] = defaults.to_json()
        if stored_mmproj is not None:
            manifest["mmproj"] = {
                "file": stored_mmproj.path.relative_to(self.root).as_posix(),
                "sha256": stored_mmproj.sha256,
                "size": stored_mmproj.size_bytes,
                "source": stored_mmproj.source,
            }
        _write_atomically(self._manifest_path(name), json.dumps(manifest, indent=2).encode())
        if stored_mmproj is None:
            self.mmproj_path(name).unlink(missing_ok=True)
        return model

    def remove(self, name: str) -> StoredModel | None:
        """Delete a model: the manifest first, so no entry ever points at a missing file."""
        model = self.get(name)
        self._manifest_path(name).unlink(missing_ok=True)
        self.model_path(name).unlink(missing_ok=True)
        self.mmproj_path(name).unlink(missing_ok=True)
        return model


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process: alive; a bogus number
        return True
    return True
