"""`hearth show NAME`: what a model's GGUF header says, without loading its weights."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.cli import humanize
from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.models.registry import UnknownModelError, find
from hearth.models.store import Projector

__all__ = ["command"]


@click.command(name="show")
@click.argument("name")
@click.option("--template", "template_only", is_flag=True, help="Print only the chat template.")
def command(name: str, template_only: bool) -> None:
    """Show a model's architecture, context length, parameters, license, chat template, and
    whether it takes images (a projector beside it)."""
    errors = Console(stderr=True, highlight=False)
    try:
        entry = find(name)
        info = read_gguf_info(entry.header_path, require_complete=entry.path is not None)
    except (UnknownModelError, NotAGGUFError) as exc:
        errors.print(Text(str(exc), style="bold red"), soft_wrap=True)
        sys.exit(1)
    if template_only:
        click.echo(info.chat_template or "", nl=bool(info.chat_template))
        return

    console = Console(highlight=False)
    rows = Table.grid(padding=(0, 3))
    rows.add_column(style="dim", no_wrap=True)
    rows.add_column(overflow="fold")
    params = f"{humanize.parameters(info.parameters)} ({info.parameters:,})"
    fields: list[tuple[str, str | None]] = [
        ("name", entry.name),
        ("architecture", info.architecture),
        ("parameters", params),
        ("quantization", info.quantization),
        ("context length", str(info.context_length) if info.context_length else None),
        ("embedding length", str(info.embedding_length) if info.embedding_length else None),
        ("layers", str(info.block_count) if info.block_count else None),
        ("vocabulary", f"{info.vocab_size:,} tokens" if info.vocab_size else None),
        ("size", humanize.size(entry.size_bytes)),
        ("reasoning", _reasoning(info.chat_template, info.architecture)),
        ("images", _images(entry.mmproj)),
        ("license", info.license or "not stated in the file"),
        ("source", entry.source),
        ("path", str(entry.path) if entry.path else "assembled on first use"),
        ("sha256", entry.sha256),
    ]
    for label, value in fields:
        if value is not None:
            rows.add_row(label, value)
    console.print(Text("Model", style="bold"))
    console.print(rows)
    console.print()
    console.print(Text("Chat template", style="bold"))
    if info.chat_template:
        console.print(Text(info.chat_template), soft_wrap=True)
    else:
        console.print(Text("none in the file; Hearth formats chats as ChatML", style="dim"))


def _images(projector: Projector | None) -> str | None:
    """Whether the model takes images: a projector beside it says so (`serve --mmproj` may give
    one to any model, so no projector is not a no)."""
    if projector is None:
        return None
    return (
        f"yes, through the projector {projector.path} ({humanize.size(projector.size_bytes)}, "
        f"from {projector.source})"
    )


def _reasoning(template_source: str | None, architecture: str) -> str:
    """Whether the model thinks before answering, as its chat template says."""
    # Imported here: jinja2 is only needed when a template is read.
    from hearth.models.chat_template import ChatTemplate

    fmt = ChatTemplate(template_source, architecture=architecture).reasoning
    if fmt is None:
        return "no"
    how = "the prompt opens the block" if fmt.opens_in_prompt else "the model opens the block"
    switch = f"; on/off with {fmt.switch}" if fmt.switch else ""
    return f"yes: {fmt.open_tag}…{fmt.close_tag} ({how}{switch})"
