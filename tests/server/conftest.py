"""The third tier: the real `hearth serve` as a subprocess on a free loopback port, with the
embedded model, polled on /health until ready (llama.cpp's and vLLM's server tests do this)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import openai
import pytest

MODEL = "smollm2:135m"
READY_TIMEOUT_S = 120


def tree_rss_kib(pid: int) -> int:
    """VmRSS of `pid` and of its children, in KiB (a process gone meanwhile counts nothing)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(status.parent.name) == pid or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class HearthServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None
    # Copies the server's output into log_path when it writes to a pipe (start_server).
    log_copier: threading.Thread | None = None
    # Clients stay referenced until stop() closes them: a client dropped to the garbage
    # collector leaves an unclosed socket, a ResourceWarning (an error here) in a later test.
    _clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", max_retries=0, **kwargs)

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/health", timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no request runs or waits: an earlier test's abandoned stream may still be
        generating the token or two it takes to notice its client left."""
        deadline = time.monotonic() + timeout
        while (health := self.health())["slots_in_use"] or health["queue_length"]:
            assert time.monotonic() < deadline, f"the server never went idle: {health}"
            time.sleep(0.05)

    def rss_kib(self) -> int:
        """Resident memory of the server and its runner processes (one per loaded model)."""
        return tree_rss_kib(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> HearthServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        for client in self._clients:
            client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_copier is not None:
            self.log_copier.join(timeout=10)
        return self.process.returncode


def _clean_environ(home: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    environ["HEARTH_HOME"] = str(home / "home")
    environ["OLLAMA_MODELS"] = str(home / "ollama-models")  # never the developer's store
    # A pull by Ollama or Docker name never reaches the internet: port 9 refuses.
    environ["HEARTH_OLLAMA_REGISTRY"] = "http://127.0.0.1:9"
    environ["HEARTH_REGISTRIES"] = "docker.io=http://127.0.0.1:9"
    return environ


def _copy_output(source: IO[bytes], log_path: Path) -> None:
    with source, log_path.open("ab", buffering=0) as log:
        while chunk := source.read1(1 << 16):
            log.write(chunk)


def start_server(
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> HearthServer:
    """`preexec_fn` runs in the child before it starts (setrlimit): its output then goes
    through a pipe this process copies to the log, so that a file size limit set there never
    cuts the log short."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"hearth-{port}.log"
    command = [sys.executable, "-m", "hearth", "serve", "--port", str(port), *args]
    environ = {**_clean_environ(log_dir), **(env or {})}
    copier = None
    if preexec_fn is None:
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environ)
    else:
        log_path.touch()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environ,
            preexec_fn=preexec_fn,
        )
        assert process.stdout is not None
        copier = threading.Thread(target=_copy_output, args=(process.stdout, log_path))
        copier.start()
    server = HearthServer(process, port, log_path, api_key, log_copier=copier)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hearth serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"hearth serve was not ready in {READY_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    """One shared server with the defaults (4 slots), for tests that don't need their own."""
    running = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture()
def client(server: HearthServer) -> openai.OpenAI:
    return server.client()
