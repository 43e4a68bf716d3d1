"""`hearth devices`: the compute devices llama.cpp's backend registry sees, the CPU's features
against those llama.cpp was built for, and where weights go (`--repack`).

The one client command that loads llama.cpp: the devices are what its build can use. It checks
the build in a child process first, so a build made for another CPU is reported, not a SIGILL.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.cli import humanize
from hearth.cli.client import base_url, server_options

if TYPE_CHECKING:
    from hearth.engine.cpu import RepackMode

__all__ = ["command"]


@click.command(name="devices")
@click.option(
    "--repack",
    envvar="HEARTH_REPACK",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="The --repack mode to explain, as `hearth serve` reads it. [env: HEARTH_REPACK]",
)
@server_options
def command(repack: RepackMode, host: str, port: int) -> None:
    """List the devices llama.cpp can run models on (CPU, and GPUs when built with them), the
    CPU features it uses, and which buffer types a server's weights are in."""
    from hearth.engine.build_check import REBUILD_HINT, check_build

    console = Console(highlight=False)
    check = check_build()
    if not check.fits:
        Console(stderr=True, highlight=False).print(
            Text(f"{check.problem}: {REBUILD_HINT}", style="bold red"), soft_wrap=True
        )
        if check.report is not None:
            _print_cpu(console, check.report)
        sys.exit(1)

    from hearth.engine.amx_probe import describe_placement
    from hearth.engine.devices import list_devices

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "TYPE", "DESCRIPTION", "MEMORY FREE", "MEMORY TOTAL"):
        table.add_column(column, no_wrap=column != "DESCRIPTION")
    for device in list_devices():
        table.add_row(
            device.name,
            device.type,
            device.description,
            humanize.size(device.memory_free),
            humanize.size(device.memory_total),
        )
    console.print(table)
    console.print()
    if check.report is not None:
        _print_cpu(console, check.report)
    console.print(f"[bold]repack[/bold]     {repack}: {describe_placement(repack)}", soft_wrap=True)
    _print_server_weights(console, host, port)


def _print_cpu(console: Console, report: dict[str, Any]) -> None:
    def names(key: str) -> str:
        return " ".join(str(name) for name in report.get(key) or []) or "—"

    console.print(f"[bold]CPU[/bold]        {report.get('model')} ({report.get('arch')})")
    console.print(f"[bold]features[/bold]   {names('features')}", soft_wrap=True)
    console.print(f"[bold]llama.cpp[/bold]  built for {names('build_features')}", soft_wrap=True)
    fits = "fits this CPU" if report.get("build_fits") else f"needs {names('missing')}"
    console.print(f"           {fits}; extra buffer types: {names('extra_buffer_types')}")


def _print_server_weights(console: Console, host: str, port: int) -> None:
    """Where a running server put each loaded model's weights (its /health)."""
    try:
        health = httpx.get(f"{base_url(host, port)}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return
    models = health.get("models") if isinstance(health, dict) else None
    if not isinstance(models, list):
        return
    for model in models:
        weights = model.get("weights") if isinstance(model, dict) else None
        if not isinstance(weights, dict):
            continue
        buffers = weights.get("buffer_types") or {}
        placed = ", ".join(f"{name} {humanize.size(size)}" for name, size in buffers.items())
        console.print(
            f"[bold]{model.get('name')}[/bold] (serving at {base_url(host, port)}): "
            f"{placed or '—'} ({weights.get('reason')})",
            soft_wrap=True,
        )
