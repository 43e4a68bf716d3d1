"""Ollama's POST /api/pull, POST /api/copy and DELETE /api/delete through the official `ollama`
client, against the real server pulling from the loopback hub (HF_ENDPOINT); never the internet.

One server for the module, started with an API key (both routes need it) and a preset whose
base is a model already in the store, so a delete can be refused for it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest

from hearth.models.registry import GEMMA_MODEL_ID, available_ids, embedded_model_path
from hearth.models.store import ModelStore
from tests.models.conftest import SMOL_FILE, SMOL_REPO, TINY_REPO
from tests.models.fake_hub import FakeHub, HubBlob, running_hub
from tests.server.conftest import HearthServer, start_server

pytestmark = pytest.mark.server

KEY = "pull-key"
PRESET_BASE = "tiny:base"  # in the store before the server starts; hearth.toml's "tiny" uses it


@dataclass
class Pulling:
    hub: FakeHub
    server: HearthServer
    models_dir: Path

    def client(self, key: str | None = KEY) -> ollama.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return ollama.Client(host=self.server.base_url, headers=headers)

    def tags(self) -> list[str]:
        with self.client() as client:
            return [m.model or "" for m in client.list().models]


@pytest.fixture(scope="module")
def pulling(
    tiny_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pulling]:
    tmp = tmp_path_factory.mktemp("ollama-pull")
    home = tmp / "home"  # start_server's HEARTH_HOME for this log dir
    store = ModelStore(home)
    staged = store.temp_path(".gguf")
    shutil.copyfile(tiny_files["Tiny-1B-Q2_K.gguf"], staged)
    sha256 = hashlib.sha256(staged.read_bytes()).hexdigest()
    store.install(PRESET_BASE, staged, source="test", sha256=sha256)
    config = tmp / "hearth.toml"
    config.write_text(f'[models."tiny"]\nbase = "{PRESET_BASE}"\n')
    hub = FakeHub(
        repos={
            SMOL_REPO: {SMOL_FILE: HubBlob(path=embedded_model_path())},
            TINY_REPO: {name: HubBlob(path=path) for name, path in tiny_files.items()},
        }
    )
    with running_hub(hub):
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        args = ["--api-key", KEY, "--config", str(config), "--ctx-size", "512"]
        with start_server(tmp, *args, env=env, api_key=KEY) as server:
            yield Pulling(hub, server, home / "models")


@pytest.mark.timeout(600)  # it generates: slow when the machine's cores are busy elsewhere
def test_streamed_pull_reports_progress_then_the_model_chats_and_is_deleted(
    pulling: Pulling,
) -> None:
    name = f"hf.co/{SMOL_REPO}:Q4_1"
    smol = embedded_model_path()
    digest = "sha256:" + hashlib.sha256(smol.read_bytes()).hexdigest()
    size = smol.stat().st_size
    with pulling.client() as client:
        progress = list(client.pull(name, stream=True))
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest"
        assert statuses[-2:] == ["verifying sha256 digest", "success"]
        downloads = progress[1:-2]
        assert downloads and all(p.status == f"downloading {digest}" for p in downloads)
        assert all(p.digest == digest and p.total == size for p in downloads)
        completed = [p.completed or 0 for p in downloads]
        assert completed == sorted(completed) and completed[-1] == size

        assert name in pulling.tags()
        reply = client.chat(
            model=name,
            messages=[{"role": "user", "content": "Say hello."}],
            options={"num_predict": 4},
        )
        assert reply.model == name and reply.message.content

        # A request streaming from the model holds it: the delete is refused meanwhile.
        # (counting greedily, it goes on for its 60 tokens, many times the time a delete takes)
        body = {
            "model": name,
            "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
            "raw": True,
            "options": {"temperature": 0, "num_predict": 60},
        }
        headers = {"Authorization": f"Bearer {KEY}"}
        url = f"{pulling.server.base_url}/api/generate"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as stream:
            lines = stream.iter_lines()  # held: a dropped iterator closes the response
            first = json.loads(next(lines))
            assert first["done"] is False, first
            with pytest.raises(ollama.ResponseError) as busy:
                client.delete(name)
            assert busy.value.status_code == 409 and "in use" in busy.value.error
            last = json.loads(list(lines)[-1])  # the request went on undisturbed
            assert last["done"] is True and last["eval_count"] == 60
        # Once idle, the delete unloads it first, then removes it from the store.
        assert client.delete(name).status == "success"
    assert name not in pulling.tags()
    running = httpx.get(f"{pulling.server.base_url}/api/ps", headers=headers).json()["models"]
    assert name not in [m["name"] for m in running]
    assert not [p for p in pulling.models_dir.iterdir() if "smollm2-135m" in p.name.lower()]


def test_pull_without_streaming_answers_once_and_keeps_the_name_asked_for(
    pulling: Pulling, tiny_files: dict[str, Path]
) -> None:
    with pulling.client() as client:
        # No quantization named: the default pick (Q4_K_M), stored under the name pulled.
        name = f"hf.co/{TINY_REPO}"
        reply = client.pull(name)
        assert reply.status == "success" and reply.completed is None and reply.digest is None
        assert name in pulling.tags()
        q4_k_m = hashlib.sha256(tiny_files["Tiny-1B-Q4_K_M.gguf"].read_bytes()).hexdigest()
        assert pulling.hub.downloads[-1].path == f"/cdn/{q4_k_m}"
        # A model that is already there answers at once, without asking the hub.
        asked = len(pulling.hub.api_calls)
        for again in (name, name.upper(), "smollm2:135m"):
            assert client.pull(again).status == "success"
            assert [p.status for p in client.pull(again, stream=True)] == ["success"]
        assert len(pulling.hub.api_calls) == asked
        assert client.delete(name).status == "success"
    # Ollama's older field name, `name`, is accepted too.
    response = httpx.post(
        f"{pulling.server.base_url}/api/pull",
        json={"name": f"hf.co/{TINY_REPO}:Q8_0", "stream": False},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200 and response.json() == {"status": "success"}
    assert f"hf.co/{TINY_REPO}:Q8_0" in pulling.tags()
    with pulling.client() as client:
        client.delete(f"hf.co/{TINY_REPO}:Q8_0")
    assert f"hf.co/{TINY_REPO}:Q8_0" not in pulling.tags()


def test_a_pull_runs_off_the_event_loop_and_resumes_after_its_client_left(
    pulling: Pulling,
) -> None:
    hub, name = pulling.hub, f"hf.co/{SMOL_REPO}:Q4_1"
    headers = {"Authorization": f"Bearer {KEY}"}
    hub.stall_after = 25 << 20  # the download hangs after 25 MB until released
    hub.release.clear()
    with pulling.client() as client:
        progress = client.pull(name, stream=True)
        assert next(progress).status == "pulling manifest"
        assert hub.stalled.wait(60)
        # The download is blocked on its thread: the server still answers at once.
        started = time.monotonic()
        version = httpx.get(f"{pulling.server.base_url}/api/version", headers=headers, timeout=10)
        assert version.status_code == 200 and time.monotonic() - started < 5
        progress.close()  # the client leaves mid-download
    hub.release.set()
    deadline = time.monotonic() + 60
    while "Stopped pulling" not in pulling.server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"Stopped pulling {name}: its client left" in pulling.server.log()
    assert name not in pulling.tags()
    # The next pull resumes from the 20 MB written before the stall (whole 10 MB chunks).
    with pulling.client() as client:
        assert client.pull(name).status == "success"
        assert hub.downloads[-1].range_start == 20 << 20 and hub.downloads[-1].status == 206
        assert name in pulling.tags()
        client.delete(name)
    hub.stalled.clear()


@pytest.mark.parametrize("stream", [False, True])
def test_pull_errors_are_statuses(pulling: Pulling, stream: bool) -> None:
    cases = [
        ("hf.co/hearth-test/Nope", 404, "no model hearth-test/Nope"),
        (f"hf.co/{TINY_REPO}:IQ1_S", 404, "no .gguf file for 'IQ1_S'"),
        (f"hf.co/{TINY_REPO}/Tiny-1B-F16.gguf", 404, "has no file Tiny-1B-F16.gguf"),
        (f"hf.co/{TINY_REPO}:Q", 400, "matches several files"),
        ("Not a name!", 400, "hf.co/ORG/REPO[:QUANT]"),
        ("hf.co/just-an-org", 400, "hf.co/ORG/REPO[:QUANT]"),
        (str(embedded_model_path()), 400, "from the Hugging Face hub"),  # never a server file
    ]
    with pulling.client() as client:
        for name, status, message in cases:
            with pytest.raises(ollama.ResponseError) as error:
                list(client.pull(name, stream=True)) if stream else client.pull(name)
            assert error.value.status_code == status, name
            assert message in error.value.error, name
        with pytest.raises(ollama.ResponseError) as insecure:
            client.pull(f"hf.co/{TINY_REPO}", insecure=True)
        assert insecure.value.status_code == 400 and "insecure" in insecure.value.error
    assert not [p for p in pulling.models_dir.glob("*.json") if "tiny-gguf" in p.name]


def test_delete_refuses_bundled_unknown_and_needed_models(pulling: Pulling) -> None:
    cases = [
        ("smollm2:135m", 400, "bundled with Hearth"),
        ("nope:1b", 404, "model 'nope:1b' not found"),
        (PRESET_BASE, 409, "base of the preset tiny"),
    ]
    if GEMMA_MODEL_ID in available_ids():
        cases.append((GEMMA_MODEL_ID, 400, "bundled and not assembled: there is nothing to remove"))
    with pulling.client() as client:
        for name, status, message in cases:
            with pytest.raises(ollama.ResponseError) as error:
                client.delete(name)
            assert error.value.status_code == status, name
            assert message in error.value.error, name
    assert PRESET_BASE in pulling.tags()


@pytest.mark.timeout(600)  # it generates: slow when the machine's cores are busy elsewhere
def test_copy_serves_the_model_under_a_second_name(pulling: Pulling) -> None:
    with pulling.client() as client:
        assert client.copy("smollm2:135m", "smol:copy").status == "success"
        assert "smol:copy" in pulling.tags()
        reply = client.chat(
            model="smol:copy",
            messages=[{"role": "user", "content": "Say hello."}],
            options={"num_predict": 4},
        )
        assert reply.model == "smol:copy" and reply.message.content
        assert client.delete("smol:copy").status == "success"
    assert "smol:copy" not in pulling.tags()
    assert "smollm2:135m" in pulling.tags()


def test_copy_refuses_unknown_sources_and_names_in_use(pulling: Pulling) -> None:
    cases = [
        ("nope:1b", "x:1", 404, "model 'nope:1b' not found"),
        ("smollm2:135m", "tiny", 409, "'tiny' already names a model on this server"),  # preset
        ("smollm2:135m", "SMOLLM2:135M", 409, "already names a model"),
        (PRESET_BASE, "bad name", 400, "invalid model name 'bad name'"),
    ]
    before = pulling.tags()
    with pulling.client() as client:
        for source, destination, status, message in cases:
            with pytest.raises(ollama.ResponseError) as error:
                client.copy(source, destination)
            assert error.value.status_code == status, destination
            assert message in error.value.error, destination
    assert pulling.tags() == before


def test_pull_copy_and_delete_need_the_api_key(pulling: Pulling) -> None:
    for key in (None, "wrong-key"):
        with pulling.client(key) as client:
            with pytest.raises(ollama.ResponseError) as pull:
                client.pull(f"hf.co/{TINY_REPO}:Q8_0")
            assert pull.value.status_code == 401
            with pytest.raises(ollama.ResponseError) as delete:
                client.delete(PRESET_BASE)
            assert delete.value.status_code == 401
            with pytest.raises(ollama.ResponseError) as copy:
                client.copy(PRESET_BASE, "tiny:copy")
            assert copy.value.status_code == 401
    assert PRESET_BASE in pulling.tags()
    assert f"hf.co/{TINY_REPO}:Q8_0" not in pulling.tags()
    assert "tiny:copy" not in pulling.tags()


def test_a_server_stop_ends_a_running_pull_with_an_error_line(hub: FakeHub, tmp_path: Path) -> None:
    hub.stall_after = 25 << 20  # the download hangs after 25 MB: only the stop can end it
    # A short drain: the stop waits that long for running requests, then ends them.
    with start_server(tmp_path, "--drain-timeout", "0.5") as server:
        body = {"model": f"hf.co/{SMOL_REPO}:Q4_1"}
        with httpx.stream("POST", f"{server.base_url}/api/pull", json=body, timeout=60) as stream:
            lines = stream.iter_lines()
            assert json.loads(next(lines)) == {"status": "pulling manifest"}
            assert hub.stalled.wait(60)
            server.process.send_signal(signal.SIGTERM)
            last = json.loads(list(lines)[-1])
        assert last == {"error": "The server is shutting down; retry once it is back."}
        # The blocked download thread does not hold up the exit.
        assert server.process.wait(30) == 0
