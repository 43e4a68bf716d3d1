"""`hearth devices`: the compute devices llama.cpp's backend registry sees.

The one client command that loads llama.cpp: the devices are what its build can use.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from hearth.cli import humanize

__all__ = ["command"]


@click.command(name="devices")
def command() -> None:
    """List the devices llama.cpp can run models on (CPU, and GPUs when built with them)."""
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
    Console(highlight=False).print(table)
