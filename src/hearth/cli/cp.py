"""`hearth cp SOURCE DESTINATION`: the same model in the store under a second name."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.text import Text

from hearth.cli import humanize
from hearth.models.registry import ModelExistsError, UnknownModelError, copy_model
from hearth.models.store import InvalidModelNameError

__all__ = ["command"]


@click.command(name="cp")
@click.argument("source")
@click.argument("destination")
def command(source: str, destination: str) -> None:
    """Copy SOURCE to the new name DESTINATION: a hard link where the file system allows one,
    so the copy takes no more disk space. Removing either name leaves the other."""
    try:
        copied = copy_model(source, destination)
    except (UnknownModelError, InvalidModelNameError, ModelExistsError, OSError) as exc:
        Console(stderr=True, highlight=False).print(
            Text(f"cannot copy {source}: {exc}", style="bold red"), soft_wrap=True
        )
        sys.exit(1)
    Console(highlight=False).print(
        f"Copied {source} to {copied.name} ({humanize.size(copied.size_bytes)}).", soft_wrap=True
    )
