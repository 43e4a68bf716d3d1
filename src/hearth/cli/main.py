"""Entry point. Subcommands load lazily, so `hearth --help` never imports llama.cpp."""

from __future__ import annotations

import importlib

import click

__all__ = ["cli", "main"]

# name -> (module, one-line help). The module exposes `command`, a click.Command.
_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("hearth.cli.serve", "Serve a model through the OpenAI API."),
    "run": ("hearth.cli.run", "Chat with a model in the terminal."),
    "pull": ("hearth.cli.pull", "Pull a model: hf.co/…, an Ollama or OCI name, or a file."),
    "list": ("hearth.cli.list_models", "List the models Hearth can serve."),
    "show": ("hearth.cli.show", "Show a model's metadata and chat template."),
    "rm": ("hearth.cli.rm", "Remove a pulled model."),
    "cp": ("hearth.cli.cp", "Copy a model under a new name."),
    "cluster": ("hearth.cli.cluster", "Serve Hearth replicas on a Ray cluster, or show them."),
    "create": ("hearth.cli.create", "Create a model with its own system prompt and parameters."),
    "ps": ("hearth.cli.ps", "Show the models the running server has loaded."),
    "journal": ("hearth.cli.journal", "Show the latest requests from a server's --journal."),
    "devices": ("hearth.cli.devices", "List the devices llama.cpp can use."),
    "launch": ("hearth.cli.launch", "Run Claude Code or Codex against this server."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command = importlib.import_module(entry[0]).command
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hearth")
def cli() -> None:
    """Hearth: a local LLM server. One model, shared by every app, through the OpenAI API."""


def main() -> None:
    cli()
