"""What every pull shares, whatever its source (the Hugging Face Hub in pull.py, an OCI registry
in oci_registry.py): the errors, what a pull reports as it goes, its result, and the checks of a
pulled file and of its name. Below both sources: oci_registry.py needs nothing of pull.py, which
hands it the OCI pulls."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.models.registry import BUNDLED_IDS
from hearth.models.store import (
    InvalidModelNameError,
    ModelStore,
    Projector,
    StoredModel,
    check_model_name,
)

__all__ = [
    "HubFile",
    "PullBusyError",
    "PullError",
    "PullNotFoundError",
    "PullReporter",
    "PullResult",
    "PullSourceError",
    "check_new_name",
    "check_pulled_gguf",
    "check_pulled_projector",
    "staged_copy",
    "staged_projector",
]


class PullError(Exception):
    """A pull that cannot go on; the message is one line for the user. Raised as is for a
    failure of the hub or of the download; the subclasses say what else went wrong, so that
    the server's /api/pull can answer with the right status."""


class PullSourceError(PullError):
    """The source or the name cannot be pulled as given: malformed, ambiguous, unsupported."""


class PullNotFoundError(PullError):
    """The hub has no such repo (or it is private), or the repo no such file."""


class PullBusyError(PullError):
    """Another pull is downloading the same file right now."""


@dataclass(frozen=True, slots=True)
class HubFile:
    filename: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class PullResult:
    model: StoredModel
    up_to_date: bool


class PullReporter:
    """What a pull tells its user. The CLI draws a rich progress bar; the default is silent."""

    def note(self, message: str) -> None:
        """A line worth showing: which file was picked, a resumed download."""

    def resolved(self, file: HubFile) -> None:
        """The hub file to pull is known, with its size and sha256; nothing is downloaded yet."""

    def start_transfer(self, description: str, total: int | None, completed: int) -> None:
        """Bytes start to flow: `completed` of `total` are already there (a resume)."""

    def advance(self, size: int) -> None:
        """`size` more bytes arrived (negative when a server ignored a Range request)."""

    def end_transfer(self) -> None:
        """The transfer stopped, finished or not."""

    def verifying(self) -> None:
        """All bytes are there; their sha256 and the GGUF header are being checked."""


def check_new_name(name: str) -> str:
    try:
        check_model_name(name)
    except InvalidModelNameError as exc:
        raise PullSourceError(str(exc)) from exc
    if name.lower() in BUNDLED_IDS:
        raise PullSourceError(f"{name} is the name of a bundled model; choose another with --name")
    return name


def check_pulled_gguf(path: Path, what: str) -> None:
    try:
        info = read_gguf_info(path)
    except NotAGGUFError as exc:
        raise PullError(f"{what} is not a usable GGUF model: {exc}") from exc
    if info.architecture == "clip":
        raise PullError(
            f"{what} is a multimodal projector (mmproj), not a model: it goes beside one "
            "(`hearth pull MODEL.gguf --mmproj FILE`)"
        )


def check_pulled_projector(path: Path, what: str) -> None:
    """A whole GGUF of llama.cpp's projector architecture, `clip` (vision and audio alike)."""
    try:
        info = read_gguf_info(path)
    except NotAGGUFError as exc:
        raise PullError(f"{what} is not a usable projector GGUF: {exc}") from exc
    if info.architecture != "clip":
        raise PullError(
            f"{what} is not a multimodal projector: its architecture is {info.architecture!r}, "
            "not 'clip'"
        )


def staged_copy(models: ModelStore, path: Path, held: ExitStack) -> Path:
    """A store file staged again for `install` (linked, not downloaded again), deleted when
    `held` closes unless installed by then."""
    staged = models.stage_copy(path)
    held.callback(staged.unlink, missing_ok=True)
    return staged


def staged_projector(
    models: ModelStore,
    existing: StoredModel | None,
    file: HubFile,
    reporter: PullReporter,
    held: ExitStack,
    fetch: Callable[[], Path],
    source: str,
) -> Projector:
    """A pulled model's projector, staged for `install`: the store's own copy when it holds this
    one already (linked, not downloaded again), else what `fetch` downloads."""
    if (
        existing is not None
        and existing.mmproj is not None
        and existing.mmproj.sha256 == file.sha256
    ):
        staged = staged_copy(models, existing.mmproj.path, held)
    else:
        reporter.resolved(file)
        staged = fetch()
    assert file.sha256 is not None and file.size is not None
    return Projector(staged, file.sha256, file.size, source)
