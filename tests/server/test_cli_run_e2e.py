"""`echo … | hearth run` end to end: it finds no server, starts the real one, and answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited orphan stays a zombie where PID 1 reaps nothing
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stop(pid: int) -> None:
    # Not our child (it has its own session), so poll rather than wait.
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_run_starts_a_server_and_answers_piped_stdin(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env["HEARTH_HOME"] = str(tmp_path)
    pid_file = tmp_path / "serve.pid"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hearth", "run", "--port", str(port)],
            input="Say hello",
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        log = tmp_path / "logs" / "serve.log"
        details = f"stderr:\n{result.stderr}\nlog:\n{log.read_text() if log.exists() else ''}"
        assert result.returncode == 0, details
        assert result.stdout.strip(), details
        pid = int(pid_file.read_text())
        assert _alive(pid)  # left running in the background, as announced
        assert f"kill {pid}" in result.stderr
    finally:
        if pid_file.exists():
            _stop(int(pid_file.read_text()))
