"""`hearth pull`: a GGUF from the Hugging Face hub, an OCI registry (Ollama's library, Docker
Hub: models/oci_registry.py) or a local file, into the model store.

Hub downloads go through huggingface_hub: `model_info` lists the repo's files with their LFS
sha256, `get_hf_file_metadata` (a HEAD) gives size and ETag, and `http_get` streams the bytes,
resuming with a Range request after a dropped connection. The bytes land in
`.partial/<sha256>.part` inside the store, which survives an interrupted pull, so the next pull
of the same file resumes where it stopped. Only a file whose size and sha256 match the hub's and
whose GGUF header is whole is renamed into the store; a mismatch deletes the partial file.

A repo with a multimodal projector (`mmproj-*.gguf`) has it pulled the same way and kept beside
the model (select_mmproj says which, when there are several), so the model takes images.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

from hearth.errors import no_space
from hearth.models.model_names import OciReference, parse_reference
from hearth.models.pull_base import (
    HubFile,
    PullBusyError,
    PullError,
    PullNotFoundError,
    PullReporter,
    PullResult,
    PullSourceError,
    check_new_name,
    check_pulled_gguf,
    check_pulled_projector,
    staged_copy,
    staged_projector,
)
from hearth.models.registry import store
from hearth.models.store import ModelStore, Projector, file_sha256

__all__ = [
    "DEFAULT_QUANT",
    "HubFile",
    "HubSource",
    "LocalSource",
    "PullBusyError",
    "PullError",
    "PullNotFoundError",
    "PullReporter",
    "PullResult",
    "PullSourceError",
    "check_new_name",
    "check_pulled_gguf",
    "hub_endpoint",
    "no_space",
    "parse_source",
    "pull",
    "quant_of",
    "select_gguf",
    "select_mmproj",
]

DEFAULT_QUANT = "Q4_K_M"
DEFAULT_ENDPOINT = "https://huggingface.co"
_HUB_PREFIXES = ("hf.co/", "huggingface.co/")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A quantization name at the end of a file stem: Q4_K_M, IQ2_XS, Q8_0, F16, BF16, TQ1_0, MXFP4.
_QUANT_AT_END = re.compile(
    r"(?:^|[-._])((?:I?Q\d+(?:_[0-9A-Z]+)*)|(?:B?F|FP)(?:16|32)|TQ\d_\d|MXFP4(?:_MOE)?)$",
    re.IGNORECASE,
)
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_HASH_BLOCK = 1 << 20
# What huggingface_hub raises besides httpx2's HTTPError (see _http_error): OSError for a size
# mismatch or a disk error (HfHubHTTPError is one too), ValueError for a malformed repo id.
_HUB_ERRORS = (OSError, ValueError)


@dataclass(frozen=True, slots=True)
class HubSource:
    repo_id: str
    quant: str | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class LocalSource:
    path: Path


def hub_endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, when it is first imported.
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _is_path(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long for a path (ENAMETOOLONG) is no file
        return False


def parse_source(text: str) -> HubSource | LocalSource | OciReference:
    """`hf.co/ORG/REPO[:QUANT]`, `hf.co/ORG/REPO/FILE.gguf`, a path to a local .gguf, or an
    OCI registry's `[HOST/][NAMESPACE/]NAME[:TAG]` (a bare name is Ollama's library)."""
    spec = re.sub(r"^https?://", "", text.strip())
    for prefix in _HUB_PREFIXES:
        if spec.lower().startswith(prefix):
            return _parse_hub(text, spec[len(prefix) :])
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf" or _is_path(path):
        return LocalSource(path)
    reference = parse_reference(text)
    if reference is not None:
        return reference
    raise PullSourceError(
        f"cannot pull {text!r}: give hf.co/ORG/REPO[:QUANT], hf.co/ORG/REPO/FILE.gguf, "
        "an Ollama or OCI name ([HOST/][NAMESPACE/]NAME[:TAG]) or the path of a .gguf file"
    )


def _parse_hub(text: str, rest: str) -> HubSource:
    parts = rest.strip("/").split("/")
    quant = None
    if len(parts) == 2 and ":" in parts[1]:
        parts[1], quant = parts[1].split(":", 1)
    if len(parts) < 2 or not all(_REPO_PART.fullmatch(part) for part in parts[:2]):
        raise PullSourceError(f"cannot pull {text!r}: expected hf.co/ORG/REPO[:QUANT]")
    if quant is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", quant):
        raise PullSourceError(f"cannot pull {text!r}: {quant!r} is not a quantization name")
    filename = "/".join(parts[2:]) or None
    if filename is not None and not filename.lower().endswith(".gguf"):
        raise PullSourceError(f"cannot pull {text!r}: only .gguf files can be pulled")
    return HubSource(f"{parts[0]}/{parts[1]}", quant, filename)


def quant_of(filename: str) -> str | None:
    """The quantization a GGUF file's name states (`x-Q4_K_M.gguf` -> `Q4_K_M`), if any."""
    stem = _SPLIT_GGUF.sub("", Path(filename).stem)
    match = _QUANT_AT_END.search(stem)
    return match.group(1).upper() if match else None


def select_gguf(files: list[HubFile], quant: str | None) -> tuple[HubFile, str | None]:
    """The .gguf to pull, and a note saying why it was picked when no quant was asked for.

    With a quant: the file whose name ends in it, else the one file whose name contains it.
    Without: the Q4_K_M file, else the only GGUF, else the smallest. Vision projectors
    (mmproj) are never picked.
    """
    ggufs = [
        f
        for f in files
        if f.filename.lower().endswith(".gguf") and "mmproj" not in Path(f.filename).name.lower()
    ]
    if not ggufs:
        raise PullNotFoundError("the repo has no .gguf model file")
    ggufs.sort(key=lambda f: f.filename)
    available = _describe(ggufs)
    if quant is not None:
        exact = [f for f in ggufs if (quant_of(f.filename) or "") == quant.upper()]
        containing = [f for f in ggufs if quant.lower() in Path(f.filename).name.lower()]
        for candidates in (exact, containing):
            if len(candidates) == 1:
                return candidates[0], None
            if len(candidates) > 1:
                names = ", ".join(f.filename for f in candidates)
                raise PullSourceError(
                    f"{quant!r} matches several files ({names}); pull one as hf.co/ORG/REPO/FILE"
                )
        raise PullNotFoundError(f"no .gguf file for {quant!r}; the repo has {available}")
    default = [f for f in ggufs if quant_of(f.filename) == DEFAULT_QUANT]
    if len(default) == 1:
        why = f"the default quantization, {DEFAULT_QUANT}"
        chosen = default[0]
    elif len(ggufs) == 1:
        why = "the repo's only GGUF"
        chosen = ggufs[0]
    else:
        chosen = min(ggufs, key=lambda f: (f.size is None, f.size or 0, f.filename))
        why = f"the smallest; the repo has no single {DEFAULT_QUANT} file"
    others = [f for f in ggufs if f is not chosen]
    note = f"Picked {chosen.filename} ({why})."
    if others:
        note += f" Also available: {_describe(others)}; pull one with hf.co/ORG/REPO:QUANT."
    return chosen, note


def _is_mmproj(filename: str) -> bool:
    name = Path(filename).name.lower()
    return name.endswith(".gguf") and "mmproj" in name


def select_mmproj(files: list[HubFile], model: HubFile) -> tuple[HubFile | None, str | None]:
    """The repo's multimodal projector to pull with `model`, and a note saying which.

    Of several: the one of the model's precision (a Q8_0 model, a Q8_0 projector), else the
    F16 one, else the first by name."""
    projectors = sorted((f for f in files if _is_mmproj(f.filename)), key=lambda f: f.filename)
    if not projectors or _is_mmproj(model.filename):
        return None, None
    if len(projectors) == 1:
        chosen = projectors[0]
        return chosen, f"With the repo's vision projector, {chosen.filename}."
    precision = quant_of(model.filename)
    same = [f for f in projectors if precision and quant_of(f.filename) == precision]
    f16 = [f for f in projectors if quant_of(f.filename) == "F16"]
    if same:
        chosen, why = same[0], f"the model's precision, {precision}"
    elif f16:
        chosen, why = f16[0], "F16; none has the model's precision"
    else:
        chosen, why = projectors[0], "the first; none has the model's precision or F16"
    others = ", ".join(f.filename for f in projectors if f is not chosen)
    return chosen, f"With the vision projector {chosen.filename} ({why}). Also there: {others}."


def _describe(files: list[HubFile]) -> str:
    return ", ".join(quant_of(f.filename) or f.filename for f in files)


def _safe_tag(text: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("-", text).strip("-.") or "gguf"


def pull(
    source: str,
    *,
    name: str | None = None,
    reporter: PullReporter | None = None,
    mmproj: Path | None = None,
) -> PullResult:
    """Pull `source` (see parse_source) into the store under `name` (or a name derived from
    the source: `hf.co/ORG/REPO:QUANT`, or a local file's stem). `mmproj`, a local projector
    GGUF, is imported beside a local model file; the hub's and Ollama's come by themselves."""
    reporter = reporter or PullReporter()
    parsed = parse_source(source)
    if mmproj is not None and not isinstance(parsed, LocalSource):
        raise PullSourceError(
            "a projector file goes with a local .gguf model; from the hub or a registry, "
            "the model's projector comes with it"
        )
    models = store()
    models.clean_staging()  # what killed pulls and imports left behind
    if isinstance(parsed, LocalSource):
        return _import_local(models, parsed.path, name, reporter, mmproj)
    if isinstance(parsed, OciReference):
        from hearth.models.oci_registry import pull_oci

        return pull_oci(models, parsed, source, name, reporter)
    return _pull_from_hub(models, parsed, name, reporter)


# --- a local file ----------------------------------------------------------------------------


def _import_local(
    models: ModelStore, path: Path, name: str | None, reporter: PullReporter, mmproj: Path | None
) -> PullResult:
    for given in (path, mmproj):
        if given is not None and not given.is_file():
            raise PullNotFoundError(f"no such file: {given}")
    check_pulled_gguf(path, str(path))
    if mmproj is not None:
        check_pulled_projector(mmproj, str(mmproj))
    name = check_new_name(name or _safe_tag(path.stem))
    with ExitStack() as staged_files:
        try:
            staged, sha256 = _copy_checked(models, path, reporter, check_pulled_gguf, staged_files)
            projector = None
            if mmproj is not None:
                staged_mmproj, mmproj_sha256 = _copy_checked(
                    models, mmproj, reporter, check_pulled_projector, staged_files
                )
                source = f"file:{mmproj.resolve()}"
                size = staged_mmproj.stat().st_size
                projector = Projector(staged_mmproj, mmproj_sha256, size, source)
            model = models.install(
                name, staged, source=f"file:{path.resolve()}", sha256=sha256, mmproj=projector
            )
        except OSError as exc:
            raise PullError(f"could not copy {path} into {models.root}: {exc}") from exc
    return PullResult(model, up_to_date=False)


def _copy_checked(
    models: ModelStore,
    path: Path,
    reporter: PullReporter,
    check: Callable[[Path, str], None],
    staged_files: ExitStack,
) -> tuple[Path, str]:
    """A copy of `path` in the staging folder (deleted when `staged_files` closes, unless
    installed meanwhile), checked again, and its sha256."""
    staged = models.temp_path(".gguf")
    staged_files.callback(staged.unlink, missing_ok=True)
    digest = hashlib.sha256()
    reporter.start_transfer(f"copying {path.name}", path.stat().st_size, 0)
    try:
        with path.open("rb") as src, staged.open("wb") as dst:
            while block := src.read(_HASH_BLOCK):
                digest.update(block)
                dst.write(block)
                reporter.advance(len(block))
            dst.flush()
            os.fsync(dst.fileno())
    finally:
        reporter.end_transfer()
    # The copy is checked again: the source could have changed while it was read.
    check(staged, f"the copy of {path}")
    return staged, digest.hexdigest()


# --- the hub ---------------------------------------------------------------------------------


class _ProgressBar:
    """Stands in for tqdm in huggingface_hub's http_get (which accepts any callable there)."""

    def __init__(
        self,
        reporter: PullReporter,
        description: str,
        *,
        total: int | None,
        initial: int = 0,
        **_: Any,
    ) -> None:
        self._reporter = reporter
        reporter.start_transfer(description, total, initial)

    def update(self, size: int) -> None:
        self._reporter.advance(size)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._reporter.end_transfer()


def _hub_files(endpoint: str, repo_id: str) -> tuple[str, str | None, list[HubFile]]:
    """(canonical repo id, commit, files with sizes and LFS sha256)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, files_metadata=True)
    except GatedRepoError as exc:
        raise PullError(
            f"{repo_id} is gated: accept its terms on the hub, then set HF_TOKEN"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise PullNotFoundError(
            f"no model {repo_id} on {endpoint} (a private repo needs HF_TOKEN)"
        ) from exc
    except (*_HUB_ERRORS, _http_error()) as exc:
        raise _hub_error(endpoint, exc) from exc
    files = [
        HubFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
    ]
    return info.id, info.sha, files


def _http_error() -> type[Exception]:
    # httpx2's, which huggingface_hub raises for transport failures and subclasses for statuses.
    from huggingface_hub.errors import HTTPError  # type: ignore[attr-defined]

    error: type[Exception] = HTTPError
    return error


def _hub_error(endpoint: str, exc: BaseException) -> PullError:
    from huggingface_hub.errors import HfHubHTTPError

    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, HfHubHTTPError):
        return PullError(f"the hub at {endpoint} refused: {first_line}")
    if isinstance(exc, _http_error()):
        return PullError(f"cannot reach the hub at {endpoint}: {first_line}")
    return PullError(first_line)


def _pull_from_hub(
    models: ModelStore, source: HubSource, name: str | None, reporter: PullReporter
) -> PullResult:
    endpoint = hub_endpoint()
    repo_id, commit, files = _hub_files(endpoint, source.repo_id)
    if source.filename is not None:
        listed = {f.filename: f for f in files}
        if source.filename not in listed:
            raise PullNotFoundError(f"{repo_id} has no file {source.filename}")
        chosen, note = listed[source.filename], None
    else:
        chosen, note = select_gguf(files, source.quant)
    if note:
        reporter.note(note)
    if _SPLIT_GGUF.search(Path(chosen.filename).stem):
        raise PullSourceError(
            f"{chosen.filename} is one part of a split GGUF; those are not supported"
        )
    tag = quant_of(chosen.filename) or _safe_tag(Path(chosen.filename).stem)
    name = check_new_name(name or f"hf.co/{repo_id}:{tag}")
    mmproj_listed, mmproj_note = select_mmproj(files, chosen)
    if mmproj_note:
        reporter.note(mmproj_note)

    url, model_file = _hub_file(repo_id, commit, chosen, endpoint)
    reporter.resolved(model_file)
    mmproj = _hub_file(repo_id, commit, mmproj_listed, endpoint) if mmproj_listed else None

    existing = models.get(name)
    model_current = existing is not None and existing.sha256 == model_file.sha256
    mmproj_sha256 = mmproj[1].sha256 if mmproj is not None else None
    if existing is not None and model_current and existing.mmproj_sha256 == mmproj_sha256:
        return PullResult(existing, up_to_date=True)

    def source_of(file: HubFile) -> str:
        return f"hf.co/{repo_id}/{file.filename}" + (f"@{commit}" if commit else "")

    with ExitStack() as held:
        # What is already in the store is linked, not downloaded again: a model pulled before
        # its repo had a projector gets only the projector.
        if existing is not None and model_current:
            staged = staged_copy(models, existing.path, held)
        else:
            staged = _download_checked(models, url, model_file, reporter, endpoint, held)
        projector = None
        if mmproj is not None:
            mmproj_url, mmproj_file = mmproj
            projector = staged_projector(
                models,
                existing,
                mmproj_file,
                reporter,
                held,
                lambda: _download_checked(
                    models, mmproj_url, mmproj_file, reporter, endpoint, held
                ),
                source_of(mmproj_file),
            )
        assert model_file.sha256 is not None
        model = models.install(
            name, staged, source=source_of(model_file), sha256=model_file.sha256, mmproj=projector
        )
    return PullResult(model, up_to_date=False)


def _hub_file(
    repo_id: str, commit: str | None, listed: HubFile, endpoint: str
) -> tuple[str, HubFile]:
    """The file's download URL, and the file with the size and sha256 its HEAD confirms."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, listed.filename, revision=commit, endpoint=endpoint)
    try:
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    except (*_HUB_ERRORS, _http_error()) as exc:
        raise _hub_error(endpoint, exc) from exc
    sha256 = _expected_sha256(listed, metadata.etag)
    size = metadata.size if metadata.size is not None else listed.size
    return url, HubFile(listed.filename, size, sha256)


def _download_checked(
    models: ModelStore,
    url: str,
    file: HubFile,
    reporter: PullReporter,
    endpoint: str,
    held: ExitStack,
) -> Path:
    """`.partial/<sha256>.part`, downloaded (resumed) whole and checked: its sha256, its GGUF
    header. Its lock is held until `held` closes, after the install."""
    assert file.sha256 is not None
    partial = models.staging_dir / f"{file.sha256}.part"
    part = held.enter_context(partial.open("ab"))
    try:
        # One pull per file at a time, until it is installed; the lock goes with the process,
        # however it ends.
        fcntl.flock(part.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise PullBusyError(f"another pull is downloading {file.filename}") from exc
    _download(url, part, file.size, file.filename, reporter, endpoint)
    reporter.verifying()
    actual = file_sha256(partial)
    if actual != file.sha256:
        partial.unlink(missing_ok=True)
        raise PullError(
            f"{file.filename} arrived corrupted (sha256 {actual}, the hub says {file.sha256}); "
            "discarded it, pull again"
        )
    check = check_pulled_projector if _is_mmproj(file.filename) else check_pulled_gguf
    try:
        check(partial, file.filename)
    except PullError:
        partial.unlink(missing_ok=True)
        raise
    return partial


def _expected_sha256(chosen: HubFile, etag: str | None) -> str:
    etag_sha = etag.lower() if etag and re.fullmatch(r"[0-9a-fA-F]{64}", etag) else None
    listed = chosen.sha256.lower() if chosen.sha256 else None
    if listed and etag_sha and listed != etag_sha:
        raise PullError(
            f"the hub's listing and its file metadata disagree on {chosen.filename}'s sha256"
        )
    expected = listed or etag_sha
    if expected is None:
        raise PullError(f"the hub gives no sha256 for {chosen.filename}; not pulling it unchecked")
    return expected


def _download(
    url: str, file: BinaryIO, size: int | None, filename: str, reporter: PullReporter, endpoint: str
) -> None:
    """Append the rest of the file at `url` to `file`, which holds what earlier pulls got."""
    from huggingface_hub.file_download import http_get

    # Exported lazily, which mypy cannot see.
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    resume = file.tell()
    if size is not None and resume > size:
        file.truncate(0)
        resume = 0
    if resume:
        from rich.filesize import decimal

        reporter.note(f"Resuming {filename} from {decimal(resume)}.")
    bar = functools.partial(_ProgressBar, reporter, filename)
    try:
        http_get(
            url,
            file,
            resume_size=resume,
            headers=build_hf_headers(library_name="hearth"),
            expected_size=size,
            displayed_filename=filename,
            tqdm_class=cast(Any, bar),
        )
        file.flush()
        os.fsync(file.fileno())
    except OSError as exc:
        if not no_space(exc):
            raise PullError(
                f"{_hub_error(endpoint, exc)} (pull again to resume the download)"
            ) from exc
        # Out of disk (or over a file size limit): what arrived stays for the next pull.
        raise PullError(
            f"out of disk space writing {filename} to {Path(file.name).parent}: "
            f"{exc.strerror or exc}; free some space, then pull again to resume the download"
        ) from exc
    except (*_HUB_ERRORS, _http_error()) as exc:
        # The partial file stays: the next pull resumes from it.
        error = _hub_error(endpoint, exc)
        raise PullError(f"{error} (pull again to resume the download)") from exc
