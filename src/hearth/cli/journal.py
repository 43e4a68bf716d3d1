"""`hearth journal`: the latest requests from the journal a server writes with --journal DIR."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["command"]


def _cell(entry: dict[str, Any], key: str, suffix: str = "") -> str:
    value = entry.get(key)
    return "—" if value is None else f"{value}{suffix}"


@click.command(name="journal")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="HEARTH_JOURNAL",
    required=True,
    help="The journal folder the server writes (its --journal; env HEARTH_JOURNAL).",
)
@click.option("-n", "--count", default=20, show_default=True, help="How many requests to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON lines.")
def command(directory: Path, count: int, as_json: bool) -> None:
    """Show the latest requests: route, model, status, tokens and timings."""
    # Imported here: the journal module pulls in starlette, which `hearth --help` never needs.
    from hearth.server.http.journal import read_entries

    if not directory.is_dir():
        Console(stderr=True).print(Text(f"no journal in {directory}", style="bold red"))
        sys.exit(1)
    entries = read_entries(directory, count)
    if as_json:
        for entry in entries:
            print(json.dumps(entry, ensure_ascii=False))
        return
    table = Table(box=None, header_style="bold")
    for column in ("time", "route", "model", "status", "in", "cached", "out", "ttft", "total"):
        table.add_column(column, justify="right" if column in ("in", "cached", "out") else "left")
    table.add_column("finish")
    for entry in entries:
        table.add_row(
            str(entry.get("time", ""))[11:23],
            f"{entry.get('method', '')} {entry.get('route', '')}",
            _cell(entry, "model"),
            _cell(entry, "status"),
            _cell(entry, "prompt_tokens"),
            _cell(entry, "cached_tokens"),
            _cell(entry, "completion_tokens"),
            _cell(entry, "ttft_ms", " ms"),
            _cell(entry, "duration_ms", " ms"),
            _cell(entry, "finish_reason"),
        )
    Console(highlight=False).print(table)
