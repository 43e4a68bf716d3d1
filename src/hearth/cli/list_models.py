"""`hearth list`: the models Hearth can serve, from the store's manifests and GGUF headers.

Reads no weights and imports no llama.cpp, so it answers at once.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from hearth.cli import humanize
from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.models.registry import list_models

__all__ = ["command"]


@click.command(name="list")
def command() -> None:
    """List the models Hearth can serve: the bundled ones, those pulled, and those in Ollama's
    store (marked "(ollama)", served in place)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "SIZE", "QUANTIZATION", "PARAMETERS", "MODIFIED"):
        table.add_column(column, no_wrap=True, justify="right" if column == "SIZE" else "left")
    for entry in list_models():
        try:
            # The header only: a not yet assembled Gemma is read from its first chunk.
            info = read_gguf_info(entry.header_path, require_complete=entry.path is not None)
            quantization, parameters = info.quantization, humanize.parameters(info.parameters)
        except NotAGGUFError:
            quantization, parameters = "unreadable", "—"
        name = entry.name + (" (bundled)" if entry.bundled else "")
        name += " (ollama)" if entry.in_ollama_store else ""
        table.add_row(
            name,
            humanize.size(entry.size_bytes),
            quantization,
            parameters,
            humanize.relative_time(entry.modified),
        )
    Console(highlight=False).print(table)
