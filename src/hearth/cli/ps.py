"""`hearth ps`: the models the running server has loaded (GET /api/ps)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.cli import humanize
from hearth.cli.client import ServerError, base_url, loaded_models, server_options

__all__ = ["command"]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _processor(model: dict[str, Any]) -> str:
    size, vram = _int(model.get("size")), _int(model.get("size_vram"))
    if not size or vram is None:
        return "—"
    if vram <= 0:
        return "CPU"
    if vram >= size:
        return "GPU"
    return f"{vram * 100 // size}% GPU"


def _until(value: Any) -> str:
    if value is None:
        return "forever"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return humanize.relative_time(moment)


def _slots(model: dict[str, Any]) -> str:
    used, total = _int(model.get("slots_in_use")), _int(model.get("slots_total"))
    if used is None or total is None:
        return "—"
    return f"{used}/{total}"


def _runner(model: dict[str, Any]) -> str:
    """The runner's pid, its restarts, and a failed model's state."""
    if "runner_pid" not in model:
        return "—"  # an older server's /health, or its /api/ps
    pid = _int(model.get("runner_pid"))
    if pid is None:
        return "in server"
    restarts = _int(model.get("restarts")) or 0
    text = f"pid {pid}"
    if restarts:
        text += f", {restarts} restart{'s' if restarts != 1 else ''}"
    return f"{text}, FAILED" if model.get("failed") else text


@click.command(name="ps")
@server_options
def command(host: str, port: int) -> None:
    """Show the models loaded in the running server: memory, slots in use, and until when."""
    errors = Console(stderr=True, highlight=False)
    try:
        models = loaded_models(host, port)
    except ServerError as exc:
        errors.print(Text(str(exc), style="bold red"), soft_wrap=True)
        sys.exit(1)
    if models is None:
        errors.print(
            Text(
                f"No Hearth server answers at {base_url(host, port)}; "
                "start one with `hearth serve`.",
                style="bold red",
            ),
            soft_wrap=True,
        )
        sys.exit(1)
    console = Console(highlight=False)
    if not models:
        console.print("No models loaded.")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "SIZE", "PROCESSOR", "SLOTS", "CONTEXT", "UNTIL", "RUNNER"):
        table.add_column(column, no_wrap=True)
    for model in models:
        context = _int(model.get("context_length"))
        table.add_row(
            str(model.get("name") or model.get("model") or "?"),
            humanize.size(_int(model.get("size"))),
            _processor(model),
            _slots(model),
            str(context) if context is not None else "—",
            _until(model.get("expires_at")),
            _runner(model),
        )
    console.print(table)
