"""`hearth create NAME --from MODEL`: a new model in the store with its own system prompt,
Jinja chat template, parameters and license, as Ollama's `create` makes one (models/create.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from hearth.cli import humanize

__all__ = ["command"]


def _value(text: str) -> Any:
    """A parameter's value as Ollama's Modelfile reads it: a number when it is one."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


def _parameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: give KEY=VALUE", param_hint="--parameter")
        key = key.strip()
        if key == "stop":  # repeated, as in a Modelfile
            params.setdefault("stop", []).append(text)
        else:
            params[key] = _value(text)
    return params


@click.command(name="create")
@click.argument("name")
@click.option(
    "--from", "from_", required=True, help="The model to start from: a name, or a .gguf file."
)
@click.option("--system", default=None, help="The system prompt a chat gets when it has none.")
@click.option(
    "--template",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A file with a Jinja chat template to use instead of the model's own.",
)
@click.option(
    "--parameter",
    "-p",
    "parameters",
    multiple=True,
    metavar="KEY=VALUE",
    help="A default, by Ollama's name (temperature=0.2, num_ctx=2048, stop=...); repeatable.",
)
@click.option("--license", "license_text", default=None, help="The model's license text.")
@click.option(
    "--quantize",
    type=click.Choice(["q8_0", "q4_0", "q4_k_m", "q4_k_s"], case_sensitive=False),
    default=None,
    help="Re-quantize through llama.cpp's quantizer.",
)
def command(
    name: str,
    from_: str,
    system: str | None,
    template: Path | None,
    parameters: tuple[str, ...],
    license_text: str | None,
    quantize: str | None,
) -> None:
    """Create the model NAME in the store from another model or a GGUF file, with its own
    defaults; a request's own fields still win over them. The file is hard-linked where the
    file system allows, so a model without --quantize takes no more disk space."""
    from hearth.models import create
    from hearth.models.registry import store
    from hearth.settings import physical_cores

    console = Console(stderr=True, highlight=False)
    source = Path(from_).expanduser()
    is_file = source.suffix.lower() == ".gguf"
    models = store()
    try:
        plan = create.plan(
            models,
            name,
            from_model=None if is_file else from_,
            gguf_file=source if is_file else None,
            system=system,
            template=template.read_text(encoding="utf-8") if template else None,
            parameters=_parameters(parameters),
            license=license_text,
            quantize=quantize,
        )
        model = create.build(
            models,
            plan,
            lambda step: console.print(Text(step, style="dim"), soft_wrap=True),
            physical_cores(),
        )
    except (create.CreateError, OSError, RuntimeError) as exc:
        console.print(Text(f"cannot create {name}: {exc}", style="bold red"), soft_wrap=True)
        sys.exit(1)
    Console(highlight=False).print(
        f"Created {model.name} ({humanize.size(model.size_bytes)}). Serve it with: "
        f"hearth serve --model {model.name}",
        soft_wrap=True,
    )
