"""`hearth pull`: a GGUF from the Hugging Face hub, an OCI registry (Ollama's library, Docker
Hub) or a local file, into the model store."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from hearth.cli import humanize
from hearth.models.pull import PullError, PullReporter, pull

__all__ = ["command"]


class _RichReporter(PullReporter):
    """A progress bar on stderr for each transfer; notes as dim lines."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def note(self, message: str) -> None:
        self._console.print(Text(message, style="dim"), soft_wrap=True)

    def start_transfer(self, description: str, total: int | None, completed: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed)

    def advance(self, size: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, size)

    def end_transfer(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None


class _ConsoleLogHandler(logging.Handler):
    """huggingface_hub's warnings (a dropped connection it resumes) as dim lines above the bar,
    instead of its own stderr handler writing through it."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        self._console.print(Text(record.getMessage(), style="dim"), soft_wrap=True)


def _route_hub_logs(console: Console) -> None:
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.handlers = [_ConsoleLogHandler(console)]
    hub_logger.propagate = False


@click.command(name="pull")
@click.argument("source")
@click.option("--name", default=None, help="Store it under this name instead of the default.")
@click.option(
    "--mmproj",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A multimodal projector GGUF to import beside a local .gguf model: it then takes images.",
)
def command(source: str, name: str | None, mmproj: Path | None) -> None:
    """Pull a model into the store: hf.co/ORG/REPO[:QUANT], hf.co/ORG/REPO/FILE.gguf, an
    Ollama name (qwen3:0.6b, user/model:tag), an OCI registry's HOST/NAMESPACE/NAME[:TAG]
    (docker.io/ai/smollm2), or a local .gguf file (copied).

    From the hub without :QUANT, the Q4_K_M file is picked (else the only, else the smallest
    GGUF). A pull that breaks off resumes where it stopped when run again; a file whose sha256
    differs from the hub's or the registry's digest is discarded. Set HF_TOKEN for gated or
    private repos. A repo's vision projector (mmproj-*.gguf), or an Ollama model's projector
    layer, comes along and is kept beside the model.
    """
    errors = Console(stderr=True, highlight=False)
    _route_hub_logs(errors)
    try:
        result = pull(source, name=name, reporter=_RichReporter(errors), mmproj=mmproj)
    except PullError as exc:
        errors.print(Text(f"Error: {exc}", style="bold red"), soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        errors.print(Text("Interrupted; `hearth pull` again resumes the download.", style="dim"))
        sys.exit(130)
    model = result.model
    if result.up_to_date:
        click.echo(f"{model.name} is up to date ({humanize.size(model.size_bytes)}).")
        return
    projector = ""
    if model.mmproj is not None:
        projector = (
            f", with its vision projector ({humanize.size(model.mmproj.size_bytes)}, sha256 "
            f"{model.mmproj.sha256[:12]}…): it takes images"
        )
    click.echo(
        f"Pulled {model.name} ({humanize.size(model.size_bytes)}, sha256 {model.sha256[:12]}…, "
        f"checked){projector}. Serve it with: hearth serve --model {model.name}"
    )
