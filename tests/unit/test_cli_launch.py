"""`hearth launch`: the environment and configuration it gives an agent, against a fake server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hearth.cli import launch, run

MODELS = ["gemma3:270m", "smollm2:135m"]


def test_claude_environment_names_the_model_everywhere_claude_code_reads_one() -> None:
    environment = launch.claude_environment("http://127.0.0.1:9", "gemma3:270m", 32768, "k")
    assert environment["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert environment["ANTHROPIC_AUTH_TOKEN"] == "k"
    assert environment["ANTHROPIC_API_KEY"] == ""  # never a key from the person's shell
    for variable in (
        "ANTHROPIC_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",  # the small background model
        "ANTHROPIC_SMALL_FAST_MODEL",
        "CLAUDE_CODE_SUBAGENT_MODEL",
    ):
        assert environment[variable] == "gemma3:270m", variable
    assert environment["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert int(environment["CLAUDE_CODE_MAX_OUTPUT_TOKENS"]) < 32768


def test_codex_arguments_configure_a_responses_provider() -> None:
    arguments = launch.codex_arguments("http://127.0.0.1:9", 'we"ird', 32768)
    assert arguments[::2] == ["-c"] * (len(arguments) // 2)
    settings = dict(pair.split("=", 1) for pair in arguments[1::2])
    assert settings["model_provider"] == '"hearth"'
    assert settings["model_providers.hearth.base_url"] == '"http://127.0.0.1:9/v1"'
    assert settings["model_providers.hearth.wire_api"] == '"responses"'
    assert settings["model_providers.hearth.env_key"] == f'"{launch.CODEX_KEY_VARIABLE}"'
    assert settings["model"] == settings["review_model"] == '"we\\"ird"'
    assert settings["model_context_window"] == "32768"
    assert int(settings["model_auto_compact_token_limit"]) < 32768


# --- against a fake Hearth ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            body: dict[str, Any] = {
                "status": "ok",
                "model": MODELS[0],
                "n_ctx_per_slot": 32768,
                "models": [{"name": MODELS[0], "n_ctx_per_slot": 32768}],
            }
        else:
            body = {"object": "list", "data": [{"id": name} for name in MODELS]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def fake_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def agents_on_path(tmp_path: Path) -> dict[str, str]:
    """`claude` and `codex` that print their argv and environment as JSON."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("claude", "codex"):
        agent = folder / name
        agent.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))\n"
        )
        agent.chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    environment["PATH"] = f"{folder}{os.pathsep}{environment.get('PATH', '')}"
    environment["HEARTH_HOME"] = str(tmp_path / "home")
    return environment


def _launch(environment: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # A subprocess: launch replaces its process with the agent's.
    return subprocess.run(
        [sys.executable, "-m", "hearth", "launch", *args],
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_launch_claude_runs_it_with_hearths_environment(
    fake_port: int, agents_on_path: dict[str, str]
) -> None:
    environment = {**agents_on_path, "ANTHROPIC_API_KEY": "sk-ant-personal"}
    done = _launch(environment, "--port", str(fake_port), "claude", "-p", "hello")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["argv"] == ["-p", "hello"]  # what follows the agent's name is the agent's
    env = printed["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{fake_port}"
    assert env["ANTHROPIC_API_KEY"] == ""
    assert env["ANTHROPIC_AUTH_TOKEN"] == "hearth"
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == MODELS[0]


def test_launch_codex_with_a_served_model_and_the_servers_key(
    fake_port: int, agents_on_path: dict[str, str]
) -> None:
    environment = {**agents_on_path, "HEARTH_API_KEY": "secret,other"}
    done = _launch(
        environment, "--port", str(fake_port), "-m", MODELS[1], "codex", "exec", "list files"
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["argv"][-2:] == ["exec", "list files"]
    assert f'model="{MODELS[1]}"' in printed["argv"]
    assert printed["env"][launch.CODEX_KEY_VARIABLE] == "secret"


def test_a_model_the_server_does_not_serve_is_refused_not_replaced(
    fake_port: int, agents_on_path: dict[str, str]
) -> None:
    done = _launch(agents_on_path, "--port", str(fake_port), "--model", "claude-opus", "claude")
    assert done.returncode == 1
    assert "does not serve 'claude-opus'" in done.stderr
    assert done.stdout == ""  # the agent never ran


def test_a_missing_agent_says_how_to_install_it(tmp_path: Path) -> None:
    environment = {**os.environ, "PATH": str(tmp_path)}
    done = _launch(environment, "codex")
    assert done.returncode == 127
    assert "npm install -g @openai/codex" in done.stderr


def test_no_server_starts_one_with_an_agents_context(
    monkeypatch: pytest.MonkeyPatch, agents_on_path: dict[str, str]
) -> None:
    monkeypatch.setenv("PATH", agents_on_path["PATH"])
    started: list[Sequence[str]] = []

    def ensure_server(*args: Any, **kwargs: Any) -> dict[str, Any]:
        started.append(args[5] if len(args) > 5 else kwargs["serve_args"])
        return {"model": MODELS[0], "n_ctx_per_slot": 32768}

    executed: list[str] = []
    monkeypatch.setattr(run, "ensure_server", ensure_server)
    monkeypatch.setattr(launch, "_served_models", lambda client: MODELS)
    monkeypatch.setattr(launch, "_exec", lambda program, argv, env: executed.append(program))
    result = CliRunner().invoke(launch.command, ["--port", "9", "claude"])
    assert result.exit_code == 0, result.output
    assert started == [["--ctx-size", "32768", "--parallel", "1"]]
    assert executed[0].endswith("claude")
