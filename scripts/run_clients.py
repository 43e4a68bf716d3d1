"""`make clients`: Claude Code and Codex, installed from npm as shipped, against `hearth serve`.

Installs both CLIs into a scratch folder (never globally), starts Hearth on a free loopback port
(Gemma 3 270M, one 32k slot, as `hearth launch` would), runs each agent once through `hearth
launch` with its default tools and a task that needs a tool, and prints for each: its exit
status, the time to its first generated event, and its token counts, or why it failed.

    python scripts/run_clients.py [--scratch /tmp/hearth-clients] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PACKAGES = ("@anthropic-ai/claude-code", "@openai/codex")
MODEL = "gemma3:270m"
SERVE = [sys.executable, "-m", "hearth", "serve", "--model", MODEL, "--ctx-size", "32768"]
SERVE += ["--parallel", "1"]
TASK = "Read the file notes.txt with a tool and tell me what it says."


@dataclass
class Outcome:
    agent: str
    returncode: int | None = None
    first_event_s: float | None = None
    total_s: float = 0.0
    tokens: dict[str, Any] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failure is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def install(scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"Installing {', '.join(PACKAGES)} into {scratch}", flush=True)
    subprocess.run(["npm", "install", "--silent", "--prefix", str(scratch), *PACKAGES], check=True)
    return scratch / "node_modules" / ".bin"


def start_hearth(port: int, home: Path) -> subprocess.Popen[bytes]:
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [*SERVE, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HEARTH_HOME": str(home)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"hearth serve exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("hearth serve was not ready in 120 s")


def _is_generated(agent: str, event: dict[str, Any]) -> bool:
    if agent == "claude":
        # Claude Code reports a failed request as a "<synthetic>" assistant message.
        message = event.get("message") or {}
        return event.get("type") == "assistant" and message.get("model") != "<synthetic>"
    item = event.get("item") or {}
    return str(event.get("type", "")).startswith("item.") and item.get("type") != "error"


def _failure(agent: str, event: dict[str, Any]) -> str | None:
    """The agent's own one-line account of a failed turn (an API error, usually)."""
    if agent == "claude" and event.get("type") == "result" and event.get("is_error"):
        return str(event.get("result"))
    if agent == "codex" and event.get("type") == "turn.failed":
        return str((event.get("error") or {}).get("message"))
    return None


def _tokens(agent: str, event: dict[str, Any]) -> dict[str, Any] | None:
    if agent == "claude" and event.get("type") == "result":
        usage = event.get("usage") or {}
        return {k: usage.get(k) for k in ("input_tokens", "output_tokens")}
    if agent == "codex" and event.get("type") == "turn.completed":
        usage = event.get("usage") or {}
        return {k: usage.get(k) for k in ("input_tokens", "output_tokens")}
    return None


def run_agent(agent: str, port: int, bin_dir: Path, work: Path, timeout: float) -> Outcome:
    if agent == "claude":
        agent_args = ["-p", TASK, "--output-format", "stream-json", "--verbose"]
        agent_args += ["--allowedTools", "Read"]
    else:
        agent_args = ["exec", "--json", "--skip-git-repo-check", TASK]
    home = work / f"{agent}-home"
    home.mkdir(exist_ok=True)
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # The agents' own state stays in the scratch folder, away from the person's.
        "CLAUDE_CONFIG_DIR": str(home),
        "CODEX_HOME": str(home),
    }
    command = [sys.executable, "-m", "hearth", "launch", "--port", str(port), agent, *agent_args]
    outcome = Outcome(agent)
    started = time.monotonic()
    print(f"\n$ hearth launch {agent} {' '.join(agent_args)}", flush=True)
    process = subprocess.Popen(
        command,
        cwd=work,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    # An agent waiting on a slow first answer prints nothing: the deadline cannot wait for a line.
    deadline = threading.Timer(timeout, process.kill)
    deadline.start()
    try:
        for line in process.stdout:
            outcome.tail = [*outcome.tail[-19:], line.rstrip()[:500]]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if outcome.first_event_s is None and _is_generated(agent, event):
                outcome.first_event_s = time.monotonic() - started
            outcome.tokens = _tokens(agent, event) or outcome.tokens
            outcome.failure = _failure(agent, event) or outcome.failure
    finally:
        deadline.cancel()
        outcome.returncode = process.wait()
        outcome.total_s = time.monotonic() - started
        if outcome.total_s >= timeout and outcome.failure is None:
            outcome.failure = f"no exit within {timeout:.0f} s (killed)"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scratch", type=Path, default=Path(tempfile.gettempdir()) / "hearth-clients"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per agent")
    args = parser.parse_args()
    bin_dir = install(args.scratch)
    work = Path(tempfile.mkdtemp(prefix="clients-", dir=args.scratch))
    (work / "notes.txt").write_text("The kettle is on.\n")
    port = _free_port()
    server = start_hearth(port, work)
    try:
        outcomes = [
            run_agent(agent, port, bin_dir, work, args.timeout) for agent in ("claude", "codex")
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\nagent   exit  first event  total    tokens")
    for outcome in outcomes:
        first = f"{outcome.first_event_s:.1f} s" if outcome.first_event_s is not None else "-"
        print(
            f"{outcome.agent:7} {outcome.returncode!s:5} {first:12} {outcome.total_s:6.1f} s "
            f"{json.dumps(outcome.tokens)}"
        )
    failed = [outcome for outcome in outcomes if not outcome.ok]
    for outcome in failed:
        print(f"\n{outcome.agent} FAILED (exit {outcome.returncode}): {outcome.failure or '?'}")
        print("its last lines:")
        print("\n".join("  " + line for line in outcome.tail))
    print(f"\nHearth's log: {work / 'serve.log'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
