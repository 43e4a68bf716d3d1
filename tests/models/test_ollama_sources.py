"""Models from everywhere through the real server and the official `ollama` client: a model in
Ollama's store (a temporary one, never the developer's), pulls by Ollama name and of Docker's
artifacts from the loopback registry, /api/create, and two clients pulling one model at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest

from hearth.models.registry import embedded_model_path
from tests.models.fake_registry import FakeRegistry, ollama_store, running_registry
from tests.server.conftest import HearthServer, start_server

pytestmark = pytest.mark.server

# Long enough that a prompt with it is clearly longer than one with a short system message.
SYSTEM = " ".join(["You are a terse assistant who answers every question in one short line."] * 6)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STALL_AT = 8 << 20
DROP_AT = 30 << 20


@dataclass
class Sources:
    server: HearthServer
    registry: FakeRegistry
    blob: Path  # the Ollama store's GGUF blob
    models_dir: Path
    digests: dict[str, str]

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.server.base_url)

    def names(self) -> list[str]:
        with self.client() as client:
            return [m.model or "" for m in client.list().models]


@pytest.fixture(scope="module")
def sources(
    tiny_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sources]:
    tmp = tmp_path_factory.mktemp("ollama-sources")
    smol = embedded_model_path()
    store_root = tmp / "ollama-store"
    blob = ollama_store(
        store_root,
        "smol",
        "latest",
        smol,
        system=SYSTEM,
        params={"num_predict": 6, "temperature": 0, "stop": ["<|im_end|>"]},
    )
    registry = FakeRegistry()
    digests = {
        "tiny": registry.add_ollama_model(
            "library/tiny",
            "q2",
            tiny_files["Tiny-1B-Q2_K.gguf"],
            system="Be brief.",
            params={"temperature": 0.3},
            license="MIT",
        ),
        "docker": registry.add_docker_model(
            "ai/tiny", "latest", tiny_files["Tiny-1B-Q8_0.gguf"], context_size=1024
        ),
        "resume": registry.add_ollama_model("library/resume", "latest", smol),
        "shared": registry.add_ollama_model("library/shared", "latest", smol),
        "bad": registry.add_ollama_model(
            "library/bad", "latest", tiny_files["Tiny-1B-Q4_K_M.gguf"], wrong_digest=True
        ),
    }
    with running_registry(registry):
        env = {
            "OLLAMA_MODELS": str(store_root),
            "HEARTH_OLLAMA_REGISTRY": registry.url,
            "HEARTH_REGISTRIES": f"docker.io={registry.url}",
        }
        with start_server(tmp, "--ctx-size", "512", "--parallel", "2", env=env) as server:
            yield Sources(server, registry, blob, tmp / "home" / "models", digests)


def test_list_shows_the_ollama_store_model(sources: Sources) -> None:
    assert "smol:latest" in sources.names()
    with httpx.Client(base_url=sources.server.base_url) as http:
        cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
        tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
    assert cards["smol:latest"]["owned_by"] == "ollama"
    assert cards["smollm2:135m"]["owned_by"] == "hearth"
    assert tags["smol:latest"]["source"] == f"ollama store: {sources.blob.parent.parent}"
    assert tags["smol:latest"]["digest"] == sources.blob.name.removeprefix("sha256-")
    assert tags["smollm2:135m"]["source"].startswith("bundled")


@pytest.mark.timeout(600)  # it generates: slow when the machine's cores are busy elsewhere
def test_chat_with_the_ollama_store_model_uses_its_layers(sources: Sources) -> None:
    question = {"role": "user", "content": "What is the capital of France?"}
    with sources.client() as client:
        plain = client.chat(model="smol:latest", messages=[question])
        # `smol` is `smol:latest`, as in Ollama.
        own_system = client.chat(
            model="smol", messages=[{"role": "system", "content": "Hi."}, question]
        )
        running = [model.model for model in client.ps().models]
    # Both names share one loaded copy.
    assert running.count("smol:latest") == 1 and "smol" not in running
    # The params layer: num_predict 6.
    assert plain.eval_count is not None and plain.eval_count <= 6
    assert plain.done_reason in ("length", "stop") and plain.message.content
    # The system layer: the chat without a system message got the long one.
    assert (plain.prompt_eval_count or 0) > (own_system.prompt_eval_count or 0) + 50
    assert not list(sources.models_dir.glob("*.gguf"))  # served from the blob: no copy


def test_delete_never_touches_ollamas_store(sources: Sources) -> None:
    with sources.client() as client, pytest.raises(ollama.ResponseError) as refused:
        client.delete("smol:latest")
    assert refused.value.status_code == 400 and "ollama rm" in refused.value.error
    assert sources.blob.is_file() and "smol:latest" in sources.names()


def test_pull_by_ollama_name_with_progress(sources: Sources) -> None:
    with sources.client() as client:
        lines = list(client.pull("tiny:q2", stream=True))
    statuses = [line.status for line in lines]
    digest = sources.digests["tiny"]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    downloads = [line for line in lines if line.status == f"downloading {digest}"]
    assert downloads and downloads[-1].completed == downloads[-1].total
    assert downloads[-1].digest == digest
    assert "tiny:q2" in sources.names()
    manifest = json.loads(next(sources.models_dir.glob("tiny%3aq2.json")).read_text())
    assert manifest["source"] == "registry.ollama.ai/library/tiny:q2"
    assert manifest["defaults"] == {
        "system": "Be brief.",
        "params": {"temperature": 0.3},
        "license": "MIT",
    }


def test_pull_a_docker_artifact(sources: Sources) -> None:
    issued = len(sources.registry.tokens_issued)
    with sources.client() as client:
        assert client.pull("docker.io/ai/tiny").status == "success"
    assert sources.registry.tokens_issued[issued:] == ["repository:ai/tiny:pull"]
    assert not sources.registry.authorized_on_blob_host
    assert "docker.io/ai/tiny" in sources.names()


def test_a_cut_off_pull_resumes(sources: Sources) -> None:
    registry = sources.registry
    digest = sources.digests["resume"]
    registry.drop_after, registry.outage_after_drop = DROP_AT, True
    with sources.client() as client:
        with pytest.raises(ollama.ResponseError, match="pull again to resume"):
            list(client.pull("resume", stream=True))
        registry.outage = False
        lines = list(client.pull("resume", stream=True))
    downloading = [line for line in lines if line.status.startswith("downloading")]
    assert (downloading[0].completed or 0) >= DROP_AT  # the bar starts where it stopped
    assert lines[-1].status == "success"
    assert registry.downloads_of(digest)[-1].range_start == DROP_AT
    assert "resume" in sources.names()


def test_a_digest_mismatch_leaves_nothing(sources: Sources) -> None:
    with sources.client() as client, pytest.raises(ollama.ResponseError) as refused:
        client.pull("bad")
    assert refused.value.status_code == 502 and "arrived corrupted" in refused.value.error
    assert "bad" not in sources.names()
    assert not list((sources.models_dir / ".partial").glob("*.part"))


def test_two_clients_pulling_one_model_share_the_download(sources: Sources) -> None:
    registry = sources.registry
    registry.stalled.clear()
    registry.release.clear()
    registry.stall_after = STALL_AT
    # The same blob as "resume"'s: count only this test's downloads.
    before = len(registry.downloads_of(sources.digests["shared"]))
    outcomes: dict[str, list[ollama.ProgressResponse]] = {}
    second_sees_progress = threading.Event()
    first_at_stall = threading.Event()  # the server has passed on every byte before the stall

    def pull(who: str) -> None:
        seen: list[ollama.ProgressResponse] = []
        with sources.client() as client:
            for line in client.pull("shared", stream=True):
                seen.append(line)
                if who == "first" and (line.completed or 0) >= STALL_AT:
                    first_at_stall.set()
                if who == "second" and line.status.startswith("downloading"):
                    second_sees_progress.set()
        outcomes[who] = seen

    first = threading.Thread(target=pull, args=("first",))
    first.start()
    assert registry.stalled.wait(60) and first_at_stall.wait(60)
    second = threading.Thread(target=pull, args=("second",))
    second.start()
    assert second_sees_progress.wait(60)
    registry.release.set()
    first.join(120)
    second.join(120)
    for who in ("first", "second"):
        assert outcomes[who][-1].status == "success", outcomes.get(who)
    joined = [line for line in outcomes["second"] if line.status.startswith("downloading")]
    assert (joined[0].completed or 0) >= STALL_AT  # it joined the download under way
    assert len(registry.downloads_of(sources.digests["shared"])) == before + 1
    assert "shared" in sources.names()


@pytest.mark.timeout(600)  # it generates
def test_create_with_a_system_prompt_and_parameters_then_chat(sources: Sources) -> None:
    with sources.client() as client:
        lines = list(
            client.create(
                model="brief",
                from_="smollm2:135m",
                system=SYSTEM,
                parameters={"num_predict": 3, "temperature": 0},
                stream=True,
            )
        )
        statuses = [line.status for line in lines]
        assert statuses[0].startswith("using existing layer sha256:")
        assert "creating system layer" in statuses and "creating parameters layer" in statuses
        assert statuses[-1] == "success"
        reply = client.chat(model="brief", messages=[{"role": "user", "content": "Hello!"}])
        base = client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hello!"}])
        shown = client.show("brief")
        templated = client.create(model="templated", from_="brief", template=CHATML)
        assert templated.status == "success"
        shown_templated = client.show("templated")
    assert reply.eval_count is not None and reply.eval_count <= 3
    assert (reply.prompt_eval_count or 0) > (base.prompt_eval_count or 0) + 50
    assert "brief" in sources.names()
    # The client models no `system` (Ollama's reply has one, and so does Hearth's): the
    # Modelfile says it.
    assert shown.modelfile is not None and f'SYSTEM """{SYSTEM}"""' in shown.modelfile
    assert shown.parameters is not None and "num_predict" in shown.parameters
    assert shown_templated.template == CHATML
    assert shown_templated.modelfile is not None and SYSTEM in shown_templated.modelfile


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"from": "smollm2:135m", "template": "{{ .System }} {{ .Prompt }}"},
            400,
            "Go's template syntax",
        ),
        ({"from": "nothing:here"}, 404, "unknown model"),
        ({"from": "smollm2:135m", "parameters": {"warmth": 1}}, 400, "unknown parameter warmth"),
        ({"from": "smollm2:135m", "parameters": {"temperature": 9}}, 400, "temperature"),
        ({"from": "smollm2:135m", "quantize": "q2_k"}, 400, "cannot quantize to 'q2_k'"),
        ({"files": {"m.gguf": "sha256:" + "0" * 64}}, 404, "POST /api/blobs/"),
        (
            {"files": {"model.safetensors": "sha256:" + "0" * 64}},
            400,
            "does not convert safetensors",
        ),
        ({"from": "smollm2:135m", "adapters": {"a": "sha256:x"}}, 400, "adapters"),
    ],
)
def test_create_refusals(
    sources: Sources, body: dict[str, object], status: int, message: str
) -> None:
    with httpx.Client(base_url=sources.server.base_url) as http:
        response = http.post("/api/create", json={"model": "refused", **body})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_create_from_a_blob(sources: Sources, tiny_files: dict[str, Path]) -> None:
    with sources.client() as client:
        digest = client.create_blob(tiny_files["Tiny-1B-Q8_0.gguf"])
        done = client.create(model="from-blob", files={"tiny.gguf": digest}, system="Hi.")
    assert done.status == "success" and "from-blob" in sources.names()
    with httpx.Client(base_url=sources.server.base_url) as http:
        assert http.head(f"/api/blobs/{digest}").status_code == 200
        wrong = http.post(f"/api/blobs/sha256:{'1' * 64}", content=b"not these bytes")
    assert wrong.status_code == 400 and "sha256" in wrong.json()["error"]


def test_no_ollama_store_leaves_it_out(sources: Sources, tmp_path: Path) -> None:
    env = {"OLLAMA_MODELS": str(sources.blob.parent.parent)}
    with (
        start_server(tmp_path, "--no-ollama-store", env=env) as server,
        ollama.Client(host=server.base_url) as client,
    ):
        names = [m.model for m in client.list().models]
        with pytest.raises(ollama.ResponseError) as missing:
            client.chat(model="smol:latest", messages=[{"role": "user", "content": "Hi"}])
    assert "smol:latest" not in names and "smollm2:135m" in names
    assert missing.value.status_code == 404
