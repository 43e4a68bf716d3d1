"""`hearth launch claude|codex`: run a coding agent against this Hearth server, as `ollama launch`.

The agent gets its configuration from its environment (Claude Code) or from `-c` overrides on its
command line (Codex), never from its config files, which stay the person's own. Every model
variable the agent reads names the served model, its small background model included: an agent
left to its default would ask for a model Hearth does not serve (a 404, never a substitute).
A server is started in the background, with a context an agent's first prompt fits, when none
answers; the agent then replaces this process, so its exit status is the command's.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence

import click
import httpx
from rich.console import Console
from rich.text import Text

from hearth.cli.client import auth_headers, base_url, server_options

__all__ = ["AGENT_CONTEXT", "claude_environment", "codex_arguments", "command"]

# Claude Code's first prompt with its default tools is ~13k tokens and Codex's ~10k; a turn or
# two of tool results must fit beside it.
AGENT_CONTEXT = 32768
# The key an agent sends when the server has none (the agents refuse to start without one).
_PLACEHOLDER_KEY = "hearth"
# Codex reads its key from the environment variable its provider names.
CODEX_KEY_VARIABLE = "HEARTH_CODEX_API_KEY"

# Every variable through which Claude Code 2.x picks a model: the main one, the aliases its
# /model menu and subagents resolve (opus, sonnet, haiku), and the small background model that
# titles and summarises (ANTHROPIC_SMALL_FAST_MODEL is its older name).
_CLAUDE_MODEL_VARIABLES = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)


def _api_key() -> str:
    header = auth_headers().get("Authorization", "")
    return header.removeprefix("Bearer ") or _PLACEHOLDER_KEY


def claude_environment(url: str, model: str, n_ctx: int, key: str) -> dict[str, str]:
    """What Claude Code needs in its environment to talk to Hearth at url and nothing else."""
    environment = {
        "ANTHROPIC_BASE_URL": url,
        # A bearer token, not ANTHROPIC_API_KEY: Claude Code asks once whether to trust an API
        # key, and an empty one keeps a key from the person's shell from being sent here.
        "ANTHROPIC_AUTH_TOKEN": key,
        "ANTHROPIC_API_KEY": "",
        # No telemetry, error reports, update checks or other calls to Anthropic's servers.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Its default of 32000 leaves no room for its own prompt in a local context.
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max(1024, n_ctx // 4)),
    }
    environment.update(dict.fromkeys(_CLAUDE_MODEL_VARIABLES, model))
    return environment


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def codex_arguments(url: str, model: str, n_ctx: int) -> list[str]:
    """Codex's `-c` overrides for a provider named hearth, on the Responses API at url."""
    settings = {
        "model": _toml_string(model),
        "review_model": _toml_string(model),
        "model_provider": '"hearth"',
        "model_providers.hearth.name": '"Hearth"',
        "model_providers.hearth.base_url": _toml_string(f"{url}/v1"),
        "model_providers.hearth.wire_api": '"responses"',
        "model_providers.hearth.env_key": _toml_string(CODEX_KEY_VARIABLE),
        "model_context_window": str(n_ctx),
        # Codex compacts the conversation at this size, before the server would refuse it.
        "model_auto_compact_token_limit": str(n_ctx * 9 // 10),
    }
    arguments: list[str] = []
    for name, value in settings.items():
        arguments += ["-c", f"{name}={value}"]
    return arguments


def _served_models(client: httpx.Client) -> list[str]:
    response = client.get("/v1/models")
    response.raise_for_status()
    return [str(entry["id"]) for entry in response.json().get("data", [])]


def _context_of(health: Mapping[str, object], model: str) -> int | None:
    models = health.get("models")
    for entry in models if isinstance(models, list) else ():
        if isinstance(entry, dict) and entry.get("name") == model:
            n_ctx = entry.get("n_ctx_per_slot")
            return n_ctx if isinstance(n_ctx, int) else None
    n_ctx = health.get("n_ctx_per_slot")
    return n_ctx if health.get("model") == model and isinstance(n_ctx, int) else None


def _exec(program: str, argv: Sequence[str], environment: Mapping[str, str]) -> None:
    os.execvpe(program, [program, *argv], dict(environment))


@click.command(
    name="launch",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("agent", type=click.Choice(["claude", "codex"]))
@click.argument("agent_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--model", "-m", default=None, help="A model Hearth serves. [default: the server's]")
@server_options
@click.option(
    "--ctx-size",
    type=click.IntRange(2048),
    default=AGENT_CONTEXT,
    show_default=True,
    help="The context per request of a server this command starts (one slot).",
)
def command(
    agent: str,
    agent_args: tuple[str, ...],
    model: str | None,
    host: str,
    port: int,
    ctx_size: int,
) -> None:
    """Run Claude Code or Codex against this Hearth server, starting one if none answers.

    Hearth's options come first; what follows the agent's name is the agent's:
    hearth launch --model gemma3:270m claude -p "hello".
    """
    from hearth.cli.run import ChatError, ensure_server

    console = Console(stderr=True, highlight=False)
    program = shutil.which(agent)
    if program is None:
        package = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex"}[agent]
        console.print(
            Text(f"`{agent}` is not on PATH; install it with: npm install -g {package}", "bold red")
        )
        sys.exit(127)
    url = base_url(host, port)
    serve_args = ["--ctx-size", str(ctx_size), "--parallel", "1"]
    with httpx.Client(base_url=url, headers=auth_headers(), timeout=10.0) as client:
        try:
            health = ensure_server(client, host, port, model, console, serve_args)
            served = _served_models(client)
        except (ChatError, httpx.HTTPError) as exc:
            console.print(Text(str(exc), "bold red"), soft_wrap=True)
            sys.exit(1)
    chosen = model or str(health["model"])
    if chosen not in served:
        console.print(
            Text(
                f"The server at {url} does not serve {chosen!r} (it serves "
                f"{', '.join(served)}). Pick one of those with --model.",
                "bold red",
            ),
            soft_wrap=True,
        )
        sys.exit(1)
    n_ctx = _context_of(health, chosen) or ctx_size
    if n_ctx < AGENT_CONTEXT:
        console.print(
            Text(
                f"The server gives each request {n_ctx} tokens of context; {agent}'s first prompt "
                f"alone is 10-15k tokens. Serve it with --ctx-size {AGENT_CONTEXT} --parallel 1.",
                "yellow",
            ),
            soft_wrap=True,
        )
    key = _api_key()
    environment = dict(os.environ)
    if agent == "claude":
        environment.update(claude_environment(url, chosen, n_ctx, key))
        argv = list(agent_args)
    else:
        environment[CODEX_KEY_VARIABLE] = key
        argv = [*codex_arguments(url, chosen, n_ctx), *agent_args]
    console.print(Text(f"Launching {agent} with {chosen} at {url}", "dim"), soft_wrap=True)
    _exec(program, argv, environment)
