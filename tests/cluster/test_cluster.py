"""Hearth replicas on a local Ray Serve cluster (issue 14), through the official openai client.

One cluster for the module (a few minutes on 2 cores): a head node with no CPU for replicas and
two worker nodes of one CPU each, a replica taking a whole worker (threads=1), 1 to 2 replicas.
The tests run in this order and build on each other: autoscaling brings the second replica the
affinity, spread and abandoned-stream tests use; failover removes a worker node last.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("ray.serve", reason="needs the cluster extra: pip install 'hearth[cluster]'")

from hearth.cluster import ClusterSettings

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(600),
    # Ray's own imports and processes warn about things Hearth does not control.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MODEL = "smollm2:135m"
SLOTS = 6  # every conversation of the affinity test keeps a slot, wherever the hash puts it


def _load_bench_cluster() -> Any:
    path = Path(__file__).parents[2] / "bench" / "cluster.py"
    spec = importlib.util.spec_from_file_location("bench_cluster", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cluster"] = module
    spec.loader.exec_module(module)
    return module


bench_cluster = _load_bench_cluster()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster = bench_cluster.LocalCluster(
        workers=2, hearth_home=tmp_path_factory.mktemp("cluster-home")
    )
    cluster.start()
    try:
        cluster.deploy(
            ClusterSettings(
                min_replicas=1,
                max_replicas=2,
                target_ongoing_requests=1,
                upscale_delay_s=1,
                downscale_delay_s=3600,  # the second replica stays for the later tests
                look_back_period_s=12,  # more than Ray's 10 s metrics interval
                replica_cpus=1,
                serve_flags={"threads": 1, "parallel": SLOTS, "ctx_size": 1024},
            )
        )
        cluster.wait_for_replicas(1)
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture()
def client(local: Any) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{local.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as opened:
        yield opened


def _replicas(health: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {replica["replica"]: replica for replica in health["replicas"]}


def _finished(health: dict[str, Any]) -> dict[str, int]:
    return {
        name: int(replica["engine"]["requests_finished"])
        for name, replica in _replicas(health).items()
    }


def test_autoscaling_grows_to_two_replicas_under_concurrent_load(local: Any) -> None:
    assert local.health()["replicas_running"] == 1
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        with openai.OpenAI(
            base_url=f"{local.base_url}/v1", api_key="unused", max_retries=0, timeout=120
        ) as loader:
            while not stop.is_set():
                try:
                    loader.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "Count slowly to fifty."}],
                        max_tokens=48,
                        temperature=0,
                        extra_body={"ignore_eos": True},
                    )
                except BaseException as exc:  # a failure ends the test below, with its cause
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        health = local.wait_for_replicas(2, timeout_s=180)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    nodes = {replica["node_id"] for replica in health["replicas"]}
    assert len(nodes) == 2, "each replica takes a whole worker node"


def test_every_turn_returns_to_its_cache(local: Any, client: openai.OpenAI) -> None:
    local.wait_for_replicas(2)
    conversations: list[list[dict[str, str]]] = [
        [{"role": "system", "content": bench_cluster.system_prompt(i, words=60)}] for i in range(6)
    ]
    previous_prompt: dict[int, int] = {}
    for turn in range(1, 4):
        for index, messages in enumerate(conversations):
            messages.append({"role": "user", "content": f"Tell me fact {turn}."})
            reply = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=6, temperature=0, seed=1
            )
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            usage = reply.usage
            assert usage is not None and usage.prompt_tokens_details is not None
            cached = usage.prompt_tokens_details.cached_tokens or 0
            if turn > 1:
                assert cached >= 0.9 * previous_prompt[index], (
                    f"conversation {index}, turn {turn}: {cached} cached of the previous "
                    f"turn's {previous_prompt[index]} prompt tokens"
                )
            else:
                assert usage.prompt_tokens > 200  # long enough that a miss would show
            previous_prompt[index] = usage.prompt_tokens


def test_conversations_spread_over_replicas(local: Any, client: openai.OpenAI) -> None:
    before = _finished(local.wait_for_replicas(2))
    for index in range(10):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": f"You are assistant number {index}."},
                {"role": "user", "content": f"Say {index}."},
            ],
            max_tokens=2,
            temperature=0,
        )
    after = _finished(local.health())
    used = [name for name in after if after[name] > before.get(name, 0)]
    assert sum(after.values()) - sum(before.values()) == 10
    assert len(used) >= 2, f"10 conversations all went to one replica: {after}"


def test_session_header_wins_over_the_conversation(local: Any, client: openai.OpenAI) -> None:
    before = _finished(local.wait_for_replicas(2))
    for index in range(6):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Say {index}."}],
            max_tokens=2,
            temperature=0,
            extra_headers={"x-session-id": "one-session"},
        )
    after = _finished(local.health())
    used = [name for name in after if after[name] > before.get(name, 0)]
    assert len(used) == 1, f"one session went to several replicas: {before} -> {after}"


def test_abandoned_stream_frees_its_slot(local: Any) -> None:
    local.wait_for_replicas(2)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        httpx.Client(base_url=local.base_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = response.iter_lines()
        for line in events:
            if line.startswith("data:") and '"content"' in line:
                break
        busy = local.health()
        (streaming,) = [r for r in busy["replicas"] if r.get("slots_in_use")]
        generated_before = streaming["engine"]["generated_tokens_total"]
    # The client has gone: the slot is free long before 900 tokens could be generated. Counted
    # on the streaming replica alone: another one may miss a fan-out on a loaded machine.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _replicas(local.health()).get(streaming["replica"], {})
        if now.get("status") == "ok" and now["slots_in_use"] == 0:
            break
        time.sleep(0.2)
    assert now.get("status") == "ok" and now["slots_in_use"] == 0, now
    generated = now["engine"]["generated_tokens_total"] - generated_before
    assert generated < 300, f"the stream ran on after its client left: {generated} tokens"


def test_cluster_ps_lists_every_replica(local: Any) -> None:
    health = local.wait_for_replicas(2)
    models = httpx.get(f"{local.base_url}/api/ps", timeout=30).json()["models"]
    assert {m["replica"] for m in models} == set(_replicas(health))
    assert all(m["name"] == MODEL and m["slots_total"] == SLOTS for m in models)
    assert {m["node_id"] for m in models} == {r["node_id"] for r in health["replicas"]}


def test_ollama_and_anthropic_apis_stream_through_the_cluster(local: Any) -> None:
    import anthropic
    import ollama

    local.wait_for_replicas(2)
    with ollama.Client(host=local.base_url) as native:
        parts = list(
            native.chat(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hi."}],
                stream=True,
                options={"num_predict": 4, "temperature": 0},
            )
        )
        assert parts[-1].done and "".join(p.message.content or "" for p in parts)
        with pytest.raises(ollama.ResponseError) as missing:  # Ollama's error shape, its status
            native.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
        assert missing.value.status_code == 404
    with (
        anthropic.Anthropic(base_url=local.base_url, api_key="unused", max_retries=0) as claude,
        claude.messages.stream(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Say hi."}]
        ) as stream,
    ):
        assert "".join(stream.text_stream)
        assert stream.get_final_message().usage.output_tokens >= 1


def test_bad_requests_keep_their_status_and_shape(local: Any) -> None:
    url = f"{local.base_url}/v1/chat/completions"
    too_big = httpx.post(url, content=b"x" * (16 * 1024 * 1024 + 1), timeout=60)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    not_json = httpx.post(url, content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.get(f"{local.base_url}/v1/no-such-route", timeout=30)
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_cli_deploys_and_auth_behaves_as_on_one_server(local: Any, tmp_path: Path) -> None:
    """`hearth cluster serve` puts a second application, with an API key, beside the first;
    `hearth cluster status` lists its replica; keys are checked as `hearth serve` checks them."""
    deploy = subprocess.run(
        [
            sys.executable, "-m", "hearth", "cluster", "serve",
            "--address", local.cluster.address, "--port", str(local.port),
            "--app-name", "keyed", "--route-prefix", "/keyed",
            "--min-replicas", "1", "--max-replicas", "1", "--replica-cpus", "0",
            "--threads", "1", "--parallel", "2", "--ctx-size", "512", "--api-key", "sesame",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr
    url = f"{local.base_url}/keyed"
    assert f"ready at {url}" in deploy.stdout

    status = subprocess.run(
        [
            sys.executable, "-m", "hearth", "cluster", "status",
            "--port", str(local.port), "--route-prefix", "/keyed",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "1/1 replicas answering" in status.stdout
    assert MODEL in status.stdout and "0/2" in status.stdout

    health = httpx.get(f"{url}/health", timeout=30)  # open, as on one server
    assert health.status_code == 200 and health.json()["replicas_running"] == 1
    unkeyed = httpx.get(f"{url}/api/ps", timeout=30)
    assert unkeyed.status_code == 401 and "error" in unkeyed.json()
    with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.models.list()
        assert refused.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0) as keyed:
        reply = keyed.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            keyed.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "Hi"}]
            )
    local.undeploy("keyed")


def test_failover_when_a_worker_node_leaves(local: Any, client: openai.OpenAI) -> None:
    local.wait_for_replicas(2)
    conversations = [
        [
            {"role": "system", "content": f"You are helper {i}. " * 8},
            {"role": "user", "content": "Hello."},
        ]
        for i in range(6)
    ]
    for messages in conversations:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    long_stream = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 900,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        httpx.Client(base_url=local.base_url, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=long_stream) as streaming,
    ):
        lines = streaming.iter_lines()
        for line in lines:
            if line.startswith("data:") and '"content"' in line:
                break
        # The worker node whose replica is streaming leaves.
        (doomed,) = [r for r in local.health()["replicas"] if r["slots_in_use"]]
        local.remove_worker(local.worker_with_node_id(doomed["node_id"]))
        removed_at = time.monotonic()
        rest = [line for line in lines if line.startswith("data:")]
    # The stream ends with the API's error event instead of hanging or stopping mid-event.
    assert rest and '"no_replica"' in rest[-1], rest[-3:]
    assert time.monotonic() - removed_at < 30

    answered_at: dict[int, float] = {}
    server_errors: list[str] = []
    while len(answered_at) < len(conversations) and time.monotonic() - removed_at < 30:
        for index, messages in enumerate(conversations):
            if index in answered_at:
                continue
            try:
                client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
            except (openai.APIStatusError, openai.APIConnectionError):
                continue  # not yet: the cluster is still noticing the node is gone
            answered_at[index] = time.monotonic()
    assert len(answered_at) == len(conversations), (
        f"answered again within 30 s: {sorted(answered_at)} of {len(conversations)}"
    )
    # After that, no 5xx: every conversation, twice over.
    for _ in range(2):
        for messages in conversations:
            try:
                client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
            except openai.APIStatusError as exc:
                server_errors.append(f"{exc.status_code}: {exc.message}")
    assert not server_errors
    # The cluster's view catches up once Ray's controller has noticed the replica is gone.
    deadline = time.monotonic() + 60
    while True:
        remaining = local.health()
        survivors = _replicas(remaining)
        answering = [r for r in survivors.values() if r["status"] == "ok"]
        if doomed["replica"] not in survivors and len(survivors) == len(answering) == 1:
            break
        assert time.monotonic() < deadline, (
            f"the cluster's view did not catch up (doomed: {doomed['replica']}): {remaining}"
        )
        time.sleep(0.5)
