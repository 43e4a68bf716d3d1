"""`hearth rm NAME`: delete a pulled model, unless a running server has it loaded."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.text import Text

from hearth.cli import humanize
from hearth.cli.client import ServerError, base_url, loaded_models, server_options
from hearth.models.registry import NotRemovableError, UnknownModelError, removable, store

__all__ = ["command"]


@click.command(name="rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Remove even if a running server has it loaded.")
@server_options
def command(names: tuple[str, ...], force: bool, host: str, port: int) -> None:
    """Remove pulled models. A model loaded in the server at --host/--port is kept unless
    --force; the bundled smollm2:135m cannot be removed."""
    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    failed = False

    def fail(message: str) -> None:
        nonlocal failed
        failed = True
        errors.print(Text(message, style="bold red"), soft_wrap=True)

    loaded: list[str] | None = None
    for name in names:
        try:
            entry = removable(name)
        except (UnknownModelError, NotRemovableError) as exc:
            fail(str(exc))
            continue
        if not force:
            if loaded is None:
                try:
                    models = loaded_models(host, port) or []
                except ServerError as exc:
                    fail(
                        f"cannot tell whether {entry.name} is loaded: {exc}; "
                        "--force removes it anyway"
                    )
                    continue
                loaded = [str(m.get("name")) for m in models] + [
                    str(m.get("model")) for m in models
                ]
            if entry.name.lower() in (n.lower() for n in loaded):
                fail(
                    f"{entry.name} is loaded in the Hearth server at {base_url(host, port)}; "
                    "stop serving it first, or pass --force"
                )
                continue
        store().remove(entry.name)
        if entry.bundled:
            console.print(
                f"Removed the assembled copy of {entry.name} ({humanize.size(entry.size_bytes)}); "
                "it is assembled again from its package on next use.",
                soft_wrap=True,
            )
        else:
            console.print(
                f"Removed {entry.name} ({humanize.size(entry.size_bytes)}).", soft_wrap=True
            )
    if failed:
        sys.exit(1)
