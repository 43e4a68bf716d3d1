"""`make test` runs this alone before the long suite: one real server and one chat. A native
crash (a CPU feature llama.cpp mishandles, a build made for another CPU) then shows as one
failure that names the signal and the CPU, not as hundreds of connection errors."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import openai
import pytest

from hearth.engine.build_check import REBUILD_HINT, check_build
from hearth.engine.cpu import read_cpu
from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server


def _died(code: int | None, log: str) -> str:
    cpu = read_cpu()
    how = f"with {signal.Signals(-code).name}" if code is not None and code < 0 else f"({code})"
    tail = "\n".join(log.strip().splitlines()[-15:])
    return (
        f"hearth serve died {how} at the first chat. CPU: {cpu.model} ({cpu.arch}), "
        f"features {' '.join(sorted(cpu.features)) or 'unknown'}. `hearth devices` and "
        f"`--repack off` help tell where. Last lines of its log:\n{tail}"
    )


def test_llama_cpp_was_built_for_this_cpu() -> None:
    check = check_build()
    assert check.fits, f"{check.problem}: {REBUILD_HINT}"


def test_one_server_answers_one_chat(tmp_path: Path) -> None:
    try:
        server: HearthServer = start_server(tmp_path)
    except RuntimeError as exc:
        pytest.fail(f"hearth serve did not start: {exc}")
    with server:
        try:
            reply = server.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
            )
        except openai.APIConnectionError:
            try:
                code = server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            pytest.fail(_died(code, server.log()))
        assert reply.usage is not None and reply.usage.completion_tokens > 0
