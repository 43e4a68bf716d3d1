"""A crash in llama.cpp never takes Hearth down: each loaded model runs in its own runner
process. These tests kill runners the ways the field does (SIGSEGV, SIGKILL as the OOM killer
does, SIGSTOP for a hang) and check what each client sees, and that nothing else notices."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import HearthServer, start_server
from tests.server.models_helpers import HELLO, Multi, served_models

pytestmark = pytest.mark.server

WATCHDOG_S = 3.0


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Multi]:
    """Two models, one slot each, and a short watchdog floor."""
    tmp = tmp_path_factory.mktemp("runners")
    flags, startup, other = served_models(tmp)
    args = [*flags, "--parallel", "1", "--ctx-size", "1024", "--runner-watchdog", str(WATCHDOG_S)]
    with start_server(tmp, *args) as server:
        yield Multi(server, startup, other)


def _ps(server: HearthServer) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{server.base_url}/api/ps", timeout=10).json()
    return {m["name"]: m for m in body["models"]}


def _runner_pid(server: HearthServer, name: str) -> int:
    client = server.client()
    client.completions.create(model=name, prompt="Hi", max_tokens=1)  # loaded, and its runner up
    pid = _ps(server)[name]["runner_pid"]
    assert isinstance(pid, int) and pid != server.process.pid
    return pid


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _long_stream(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=HELLO,
        max_tokens=300,
        stream=True,
        extra_body={"ignore_eos": True},
    )


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_a_runner_killed_mid_stream_ends_that_stream_only(two: Multi, sig: signal.Signals) -> None:
    server = two.server
    client = server.client()
    pid = _runner_pid(server, two.startup)
    restarts = _ps(server)[two.startup]["restarts"]
    _runner_pid(server, two.other)

    results: dict[str, Any] = {}

    def other_model_stream() -> None:
        text = "".join(c.choices[0].delta.content or "" for c in _long_stream(client, two.other))
        results["other"] = text

    def queued_behind() -> None:  # --parallel 1: waits in the runner's queue behind the stream
        results["queued"] = client.chat.completions.create(
            model=two.startup, messages=HELLO, max_tokens=5
        )

    doomed = iter(_long_stream(client, two.startup))
    first = next(doomed)
    assert first.choices[0].delta.role == "assistant"
    threads = [threading.Thread(target=other_model_stream), threading.Thread(target=queued_behind)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: server.health()["queue_length"] >= 1, 30, "the request never queued")
    os.kill(pid, sig)

    with pytest.raises(openai.APIError) as caught:
        for _ in doomed:
            pass
    assert "model_crashed" in str(caught.value.body) or "crashed" in caught.value.message
    assert sig.name in caught.value.message
    for thread in threads:
        thread.join(120)
    assert len(results["other"]) > 0  # the other model's stream went to its end
    assert results["queued"].choices[0].finish_reason == "length"  # handed to the restart

    reply = client.chat.completions.create(model=two.startup, messages=HELLO, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    entry = _ps(server)[two.startup]
    assert entry["restarts"] == restarts + 1
    assert entry["runner_pid"] != pid
    assert sig.name in entry["last_crash"]
    assert entry["failed"] is None
    log = server.log()
    crashed = f"signal {sig.value} ({sig.name})"
    assert f"Model {two.startup}: runner (pid {pid}) crashed: {crashed}" in log
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert f'hearth_runner_crashes_total{{model="{two.startup}"}}' in metrics
    health = {m["name"]: m for m in server.health()["models"]}
    assert health[two.startup]["runner"]["pid"] == entry["runner_pid"]
    assert health[two.startup]["state"] == "loaded"


def test_a_stopped_runner_is_killed_by_the_watchdog(two: Multi) -> None:
    server = two.server
    client = server.client()
    pid = _runner_pid(server, two.other)
    stream = iter(_long_stream(client, two.other))
    next(stream)
    os.kill(pid, signal.SIGSTOP)
    # max(--runner-watchdog, 20x the slowest step seen): a busy machine's slow step counts
    limit = {m["name"]: m for m in server.health()["models"]}[two.other]["runner"]["watchdog_s"]
    assert limit >= WATCHDOG_S
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "watchdog" in caught.value.message
    assert time.monotonic() - started < limit + 10
    assert not _alive(pid)
    reply = client.completions.create(model=two.other, prompt="Hi", max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens == 2
    assert "watchdog" in _ps(server)[two.other]["last_crash"]


def test_unloading_a_model_returns_its_runner_s_memory(two: Multi) -> None:
    server = two.server
    pid = _runner_pid(server, two.other)
    server_rss = _rss_bytes(server.process.pid)
    runner_rss = _rss_bytes(pid)
    response = httpx.post(
        f"{server.base_url}/admin/models/unload", json={"model": two.other}, timeout=60
    )
    assert response.json()["status"] == "unloaded"
    _wait_for(lambda: not _alive(pid), 10, "the runner outlived its model")
    after = _rss_bytes(server.process.pid)
    # Everything the runner held went back; the server itself grew by less than 5% of it.
    assert after - server_rss < runner_rss * 0.05, (server_rss, after, runner_rss)
    assert two.other not in _ps(server)


def test_a_crash_loop_marks_the_model_failed_until_it_is_loaded_again(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "1", "--ctx-size", "512") as server:
        client = server.client()
        model = "smollm2:135m"
        for crash in range(3):
            pid = _runner_pid(server, model)
            os.kill(pid, signal.SIGSEGV)
            if crash < 2:
                _wait_for(
                    lambda old=pid: _ps(server)[model]["runner_pid"] not in (None, old),
                    60,
                    "the runner never came back",
                )
        _wait_for(lambda: _ps(server)[model]["failed"] is not None, 30, "never marked failed")
        with pytest.raises(openai.APIStatusError) as caught:
            client.completions.create(model=model, prompt="Hi", max_tokens=2)
        assert caught.value.status_code == 503
        assert "marked failed" in caught.value.message and "SIGSEGV" in caught.value.message
        assert {m["name"]: m for m in server.health()["models"]}[model]["state"] == "failed"

        response = httpx.post(
            f"{server.base_url}/admin/models/load", json={"model": model}, timeout=120
        )
        assert response.status_code == 200 and response.json()["failed"] is None
        reply = client.completions.create(model=model, prompt="Hi", max_tokens=2)
        assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_a_killed_server_leaves_no_runner(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--parallel", "1", "--ctx-size", "512")
    try:
        pid = _runner_pid(server, "smollm2:135m")
        server.process.kill()
        server.process.wait()
        _wait_for(lambda: not _alive(pid), 5, "a runner outlived its server by 5 s")
    finally:
        server.stop()
