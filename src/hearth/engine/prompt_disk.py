"""The prompt cache on disk: slots' KV caches saved at unload and on a graceful stop, restored
into a slot when a new prompt starts with one of them, so a long chat is not re-read after a
restart.

Pure Python over files; the runner does the llama.cpp part (`llama_state_seq_save_file` and
`llama_state_seq_load_file`, behind the `write` and `read` callables). Layout under
`HEARTH_HOME/prompt-cache/`:

    <model fingerprint>-<type_k>-<type_v>-fa<flash>/<entry>.kv    llama.cpp's sequence state
    <model fingerprint>-<type_k>-<type_v>-fa<flash>/<entry>.json  its tokens, size and CRC-32

A state only loads into a context like the one that wrote it, so the folder is keyed by the
model file's fingerprint (its size, header and sampled chunks: not a full read of gigabytes at
every load) and the KV cache's types and flash attention (which decides the V layout). The
whole folder is kept under `--prompt-cache-disk` bytes, least recently used evicted first (a
file's mtime is its last use). A file that is corrupt, or does not match what its JSON says,
is dropped with a warning and the prompt is decoded as if nothing was saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PROMPT_CACHE_DIR",
    "PromptDiskCache",
    "SavedPrefix",
    "cache_folder_name",
    "model_fingerprint",
]

logger = logging.getLogger(__name__)

PROMPT_CACHE_DIR = "prompt-cache"
_FORMAT = 1
# Below this many tokens a prefix is decoded faster than a file is found and read.
MIN_SAVED_TOKENS = 64
# The fingerprint reads the head (the GGUF header and metadata), the tail and this many chunks
# between: a few MiB of any model file.
_HEAD_BYTES = 1 << 20
_SAMPLES = 16
_SAMPLE_BYTES = 64 << 10
_CRC_CHUNK = 4 << 20


def model_fingerprint(path: Path) -> str:
    """A stable name for a model file's contents that reads only a few MiB of it."""
    size = path.stat().st_size
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=12)
    with path.open("rb") as file:
        digest.update(file.read(_HEAD_BYTES))
        for i in range(1, _SAMPLES + 1):
            file.seek(max(0, size * i // (_SAMPLES + 1) - _SAMPLE_BYTES // 2))
            digest.update(file.read(_SAMPLE_BYTES))
        file.seek(max(0, size - _SAMPLE_BYTES))
        digest.update(file.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def cache_folder_name(fingerprint: str, type_k: str, type_v: str, flash_attn: str) -> str:
    return f"{fingerprint}-{type_k}-{type_v}-fa{flash_attn}"


@dataclass(frozen=True, slots=True)
class SavedPrefix:
    """One saved KV cache: the tokens it holds, by position, and its files."""

    name: str
    tokens: tuple[int, ...]
    kv_path: Path
    kv_bytes: int
    crc32: int

    @property
    def meta_path(self) -> Path:
        return self.kv_path.with_suffix(".json")


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as file:
        while chunk := file.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    # Binary search over slice equality: C comparisons, not a Python loop per token.
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class PromptDiskCache:
    """The saved prefixes of one model and KV configuration. Used by the engine thread only
    (after construction)."""

    def __init__(self, root: Path, folder: str, limit_bytes: int, max_tokens: int) -> None:
        self.root = root
        self.folder = root / folder
        self.limit_bytes = limit_bytes
        self.max_tokens = max_tokens  # a slot's context: longer states cannot load into one
        self.entries: dict[str, SavedPrefix] = {}
        self._load_index()

    # -- lookup and restore (admission) --------------------------------------------------------

    def longest_prefix(
        self, prompt: tuple[int, ...], at_least: int
    ) -> tuple[SavedPrefix, tuple[int, ...], int] | None:
        """The saved entry sharing the longest prefix with `prompt`, if it shares `at_least`
        tokens, its tokens and that length (the scheduler's `SavedPrefixLookup`)."""
        if at_least > len(prompt) or not self.entries:
            return None
        best: SavedPrefix | None = None
        best_common = 0
        head = prompt[:at_least]
        for entry in self.entries.values():
            if entry.tokens[:at_least] != head:
                continue
            common = _common_prefix(entry.tokens, prompt)
            if common > best_common:
                best, best_common = entry, common
        return None if best is None else (best, best.tokens, best_common)

    def restore(self, entry: SavedPrefix, read: Callable[[Path], list[int] | None]) -> bool:
        """Load `entry` with `read` (the runner's, into a slot): whether the slot now holds its
        tokens. A file that fails is dropped with a warning."""
        try:
            if entry.kv_path.stat().st_size != entry.kv_bytes or _crc32(entry.kv_path) != (
                entry.crc32
            ):
                self._drop(entry, "its contents do not match its checksum (corrupt)")
                return False
        except OSError as exc:
            self._drop(entry, f"it cannot be read ({exc})")
            return False
        tokens = read(entry.kv_path)
        if tokens is None:
            self._drop(entry, "llama.cpp could not load it")
            return False
        if tuple(tokens) != entry.tokens:
            self._drop(entry, "its tokens differ from those its index lists")
            return False
        with contextlib.suppress(OSError):
            os.utime(entry.kv_path)  # its last use, for the LRU
        return True

    # -- save (unload, graceful stop) ----------------------------------------------------------

    def save(self, tokens: Sequence[int], write: Callable[[Path], bool]) -> bool:
        """Save a slot holding `tokens` with `write` (the runner's), unless a saved entry
        already holds them; entries it extends are replaced. Whether anything was written."""
        held = tuple(tokens)
        if len(held) < MIN_SAVED_TOKENS or len(held) > self.max_tokens or self.limit_bytes <= 0:
            return False
        for entry in list(self.entries.values()):
            if entry.tokens[: len(held)] == held:  # already on disk, as it is or longer
                with contextlib.suppress(OSError):
                    os.utime(entry.kv_path)
                return False
        name = hashlib.blake2b(
            b"".join(t.to_bytes(4, "little", signed=True) for t in held), digest_size=12
        ).hexdigest()
        kv_path = self.folder / f"{name}.kv"
        staging = self.folder / f"{name}.kv.partial"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not write(staging):
                logger.warning("Could not save a prompt cache of %d tokens", len(held))
                staging.unlink(missing_ok=True)
                return False
            entry = SavedPrefix(name, held, kv_path, staging.stat().st_size, _crc32(staging))
            meta = {
                "format": _FORMAT,
                "kv_bytes": entry.kv_bytes,
                "crc32": entry.crc32,
                "tokens": list(held),
            }
            meta_staging = entry.meta_path.with_suffix(".json.partial")
            meta_staging.write_text(json.dumps(meta, separators=(",", ":")), encoding="utf-8")
            # The state first, its index last: an index always names a whole file.
            os.replace(staging, kv_path)
            os.replace(meta_staging, entry.meta_path)
        except OSError as exc:
            logger.warning("Could not save a prompt cache in %s: %s", self.folder, exc)
            staging.unlink(missing_ok=True)
            return False
        for other in list(self.entries.values()):
            if held[: len(other.tokens)] == other.tokens:  # a prefix of this one: superseded
                self._remove(other)
        self.entries[name] = entry
        self.evict()
        return True

    def evict(self) -> None:
        """Remove the least recently used states, of any model, until all fit the limit."""
        files: list[tuple[float, int, Path]] = []
        for kv_path in self.root.glob("*/*.kv"):
            try:
                stat = kv_path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, kv_path))
        total = sum(size for _, size, _ in files)
        for _, size, kv_path in sorted(files):
            if total <= self.limit_bytes:
                break
            total -= size
            entry = self.entries.get(kv_path.stem) if kv_path.parent == self.folder else None
            if entry is not None:
                self._remove(entry)
            else:
                kv_path.unlink(missing_ok=True)
                kv_path.with_suffix(".json").unlink(missing_ok=True)

    # -- the index ---------------------------------------------------------------------------

    def _load_index(self) -> None:
        if not self.folder.is_dir():
            return
        for meta_path in self.folder.glob("*.json"):
            kv_path = meta_path.with_suffix(".kv")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                tokens = meta["tokens"]
                if meta["format"] != _FORMAT or not all(type(t) is int for t in tokens):
                    raise ValueError("an unknown format")
                entry = SavedPrefix(
                    meta_path.stem, tuple(tokens), kv_path, int(meta["kv_bytes"]), meta["crc32"]
                )
                if not kv_path.is_file():
                    raise ValueError(f"{kv_path.name} is missing")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("Ignoring the saved prompt cache %s: %s", meta_path, exc)
                meta_path.unlink(missing_ok=True)
                kv_path.unlink(missing_ok=True)
                continue
            if len(entry.tokens) <= self.max_tokens:
                self.entries[entry.name] = entry
        if self.entries:
            logger.info("Prompt cache: %d saved prefixes in %s", len(self.entries), self.folder)

    def _drop(self, entry: SavedPrefix, why: str) -> None:
        logger.warning(
            "Ignoring the saved prompt cache %s (%d tokens): %s; the prompt is decoded instead",
            entry.kv_path,
            len(entry.tokens),
            why,
        )
        self._remove(entry)

    def _remove(self, entry: SavedPrefix) -> None:
        self.entries.pop(entry.name, None)
        entry.meta_path.unlink(missing_ok=True)
        entry.kv_path.unlink(missing_ok=True)
