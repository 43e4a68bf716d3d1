"""Many models in one real server: on-demand loads, keep_alive, eviction that never touches a
busy model, presets, /api/ps, the admin endpoints and their auth.

The second model is `gemma3:270m` when the registry knows it; otherwise a copy of the embedded
SmolLM2 GGUF under another name, served as the startup model (`--model PATH`), with the
embedded `smollm2:135m` loaded on demand.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.server.conftest import _clean_environ, start_server
from tests.server.models_helpers import HELLO, Multi, served_models

pytestmark = pytest.mark.server

PIRATE_SYSTEM = "You are a pirate. Answer every question with a pirate's words."


def _presets(path: Path, base: str) -> Path:
    broken = path.parent / "broken.gguf"
    broken.write_bytes(b"not a model at all")
    path.write_text(
        f"""
[models."pirate"]
base = "{base}"
system = "{PIRATE_SYSTEM}"
ctx_size = 1024
parallel = 1
[models."pirate".params]
temperature = 0
max_tokens = 3

[models."counter"]
base = "{base}"
[models."counter".params]
temperature = 0
stop = [","]

[models."broken"]
base = "{broken}"
"""
    )
    return path


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Multi]:
    tmp = tmp_path_factory.mktemp("multi")
    flags, startup, other = served_models(tmp)
    config = _presets(tmp / "presets.toml", startup)
    args = [*flags, "--config", str(config), "--ctx-size", "512", "--parallel", "2"]
    with start_server(tmp, *args, "--max-loaded-models", "4") as server:
        yield Multi(server, startup, other)


def _unload(multi: Multi, name: str) -> None:
    response = multi.post("/admin/models/unload", {"model": name})
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("unloaded", "not_loaded")
    assert name not in multi.ps()


# -- many models, on demand --------------------------------------------------------------------


def test_models_lists_every_available_model_and_alias(multi: Multi) -> None:
    ids = [m.id for m in multi.server.client().models.list().data]
    assert ids[0] == multi.startup
    assert {multi.other, "pirate", "counter"} <= set(ids)
    assert multi.server.client().models.retrieve("pirate").id == "pirate"


def test_two_models_answer_in_turn(multi: Multi) -> None:
    client = multi.server.client()
    for name in (multi.startup, multi.other, multi.startup, multi.other):
        reply = client.chat.completions.create(
            model=name, messages=HELLO, max_tokens=4, temperature=0
        )
        assert reply.model == name
        assert reply.choices[0].message.content
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 4
    running = multi.ps()
    assert {multi.startup, multi.other} <= set(running)
    # The startup model is pinned; one loaded on demand expires after --keep-alive (5m).
    assert running[multi.startup]["expires_at"] is None
    assert running[multi.other]["expires_at"] is not None
    row = running[multi.other]
    assert row["size"] > 50 * 2**20 and row["size_vram"] == 0
    assert (row["slots_total"], row["context_length"], row["slots_in_use"]) == (2, 512, 0)


def test_concurrent_first_requests_load_the_model_once(multi: Multi) -> None:
    _unload(multi, multi.other)
    before = multi.loads_of(multi.other)
    replies: list[str] = []

    def ask() -> None:
        with httpx.Client(timeout=60) as http:
            response = http.post(
                f"{multi.server.base_url}/v1/completions",
                json={"model": multi.other, "prompt": "One, two,", "max_tokens": 2},
            )
            replies.append(response.json()["choices"][0]["text"])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 4
    assert multi.loads_of(multi.other) == before + 1


def test_health_tells_a_model_is_loading(multi: Multi) -> None:
    _unload(multi, multi.other)
    seen: list[dict[str, Any]] = []
    request = threading.Thread(
        target=lambda: multi.post(
            "/v1/completions", {"model": multi.other, "prompt": "Hi", "max_tokens": 1}
        )
    )
    request.start()
    while request.is_alive():
        health = multi.get("/health").json()
        if health["loading"]:
            seen.append(health)
    request.join()
    assert seen, "the load was never seen in /health"
    assert seen[0]["loading"] == [multi.other]
    assert {"name": multi.other, "state": "loading"} in seen[0]["models"]
    # The top-level fields still describe the startup model while another loads.
    assert seen[0]["model"] == multi.startup and seen[0]["slots_total"] == 2
    entries = {m["name"]: m for m in multi.get("/health").json()["models"]}
    assert entries[multi.other]["state"] == "loaded"


def test_keep_alive_zero_unloads_after_the_request_and_frees_memory(multi: Multi) -> None:
    client = multi.server.client()
    client.completions.create(model=multi.other, prompt="Hi", max_tokens=1)
    assert multi.other in multi.ps()
    loaded = multi.rss_kib()
    client.completions.create(
        model=multi.other, prompt="Hi", max_tokens=1, extra_body={"keep_alive": 0}
    )
    deadline = time.monotonic() + 10
    while multi.other in multi.ps() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multi.other not in multi.ps()
    unloaded = multi.rss_kib()
    print(f"\nserver VmRSS with {multi.other} loaded: {loaded} kB; after unload: {unloaded} kB")
    assert unloaded < loaded - 40 * 1024  # the weights' mapping and the KV cache are gone
    # The next request loads it again.
    client.completions.create(model=multi.other, prompt="Hi", max_tokens=1)
    assert multi.other in multi.ps()


def test_keep_alive_forms_and_bad_values(multi: Multi) -> None:
    client = multi.server.client()
    client.chat.completions.create(
        model=multi.other, messages=HELLO, max_tokens=1, extra_body={"keep_alive": -1}
    )
    assert multi.ps()[multi.other]["expires_at"] is None
    client.chat.completions.create(
        model=multi.other, messages=HELLO, max_tokens=1, extra_body={"keep_alive": "1h"}
    )
    expires = multi.ps()[multi.other]["expires_at"]
    assert expires is not None and expires.endswith("+00:00")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=multi.other, messages=HELLO, max_tokens=1, extra_body={"keep_alive": "soon"}
        )
    assert caught.value.body["param"] == "keep_alive"  # type: ignore[index]


def test_unknown_model_is_a_404_that_names_the_served_ones(multi: Multi) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        multi.server.client().chat.completions.create(model="nope", messages=HELLO)
    body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
    assert body["code"] == "model_not_found"
    assert "pirate" in body["message"] and multi.startup in body["message"]


def test_metrics_carry_a_model_label_per_loaded_model(multi: Multi) -> None:
    multi.server.client().completions.create(model=multi.other, prompt="Hi", max_tokens=1)
    text = multi.get("/metrics").text
    for name in (multi.startup, multi.other):
        assert f'hearth_slots{{model="{name}"}}' in text
    assert re.search(r"^hearth_models_loaded \d", text, re.MULTILINE)


def test_a_model_that_fails_to_load_is_a_500_and_the_rest_still_serve(multi: Multi) -> None:
    response = multi.post(
        "/v1/chat/completions", {"model": "broken", "messages": HELLO, "max_tokens": 1}
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and "broken" in error["message"]
    assert "broken" not in multi.ps() and multi.get("/health").json()["loading"] == []
    reply = multi.server.client().completions.create(model=multi.startup, prompt="Hi", max_tokens=1)
    assert reply.choices[0].text is not None


# -- presets -----------------------------------------------------------------------------------


def test_a_preset_gives_its_system_prompt_and_sampling_defaults(multi: Multi) -> None:
    client = multi.server.client()
    alias = client.chat.completions.create(model="pirate", messages=HELLO)
    assert alias.model == "pirate"
    assert alias.usage is not None and alias.usage.completion_tokens <= 3  # its max_tokens
    # The same as the base model asked with that system prompt, greedily, for 3 tokens.
    base = client.chat.completions.create(
        model=multi.startup,
        messages=[{"role": "system", "content": PIRATE_SYSTEM}, *HELLO],  # type: ignore[list-item]
        max_tokens=3,
        temperature=0,
    )
    assert alias.choices[0].message.content == base.choices[0].message.content
    assert base.usage is not None and alias.usage.prompt_tokens == base.usage.prompt_tokens
    # The request's own fields win over the preset's.
    longer = client.chat.completions.create(
        model="pirate", messages=HELLO, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert longer.usage is not None and longer.usage.completion_tokens == 5
    # An alias is its own loaded model, with its own context and slots.
    row = multi.ps()["pirate"]
    assert (row["context_length"], row["slots_total"]) == (1024, 1)


def test_a_preset_stop_sequence_applies(multi: Multi) -> None:
    client = multi.server.client()
    prompt = "Count: one, two, three, four, five,"
    base = client.completions.create(
        model=multi.startup, prompt=prompt, max_tokens=12, temperature=0
    )
    assert "," in base.choices[0].text
    alias = client.completions.create(model="counter", prompt=prompt, max_tokens=12)
    assert alias.choices[0].finish_reason == "stop"
    assert alias.choices[0].text == base.choices[0].text.split(",")[0]


def test_ollama_chat_and_generate_honour_presets(multi: Multi) -> None:
    with ollama.Client(host=multi.server.base_url) as client:
        alias = client.chat(model="pirate", messages=HELLO)
        assert alias.model == "pirate"
        assert alias.eval_count is not None and alias.eval_count <= 3  # its max_tokens
        # The same as the base model asked with that system prompt, greedily, for 3 tokens.
        greedy_3 = {"temperature": 0, "num_predict": 3}
        base = client.chat(
            model=multi.startup,
            messages=[{"role": "system", "content": PIRATE_SYSTEM}, *HELLO],
            options=greedy_3,
        )
        assert alias.message.content == base.message.content
        # /api/generate's prompt gets the preset's system prompt too, unless it sends its own.
        generated = client.generate(model="pirate", prompt="Say hello.")
        expected = client.generate(
            model=multi.startup, prompt="Say hello.", system=PIRATE_SYSTEM, options=greedy_3
        )
        assert generated.response == expected.response
        # The request's own options win over the preset's.
        shorter = client.chat(model="pirate", messages=HELLO, options={"num_predict": 1})
        assert shorter.eval_count == 1
        # A preset's stop sequence ends a raw /api/generate as it ends /v1/completions.
        prompt = "Count: one, two, three, four, five,"
        plain = client.generate(
            model=multi.startup,
            prompt=prompt,
            raw=True,
            options={"temperature": 0, "num_predict": 12},
        )
        assert "," in plain.response
        counter = client.generate(
            model="counter", prompt=prompt, raw=True, options={"num_predict": 12}
        )
        assert counter.done_reason == "stop"
        assert counter.response == plain.response.split(",")[0]


# -- admin endpoints ---------------------------------------------------------------------------


def test_admin_load_and_unload(multi: Multi) -> None:
    _unload(multi, "counter")
    response = multi.post("/admin/models/load", {"model": "counter", "keep_alive": "2m"})
    assert response.status_code == 200, response.text
    row = response.json()
    assert row["name"] == "counter" and row["expires_at"] is not None
    assert "counter" in multi.ps()
    response = multi.post("/admin/models/unload", {"model": "counter"})
    assert response.json() == {"model": "counter", "status": "unloaded"}
    assert "counter" not in multi.ps()
    assert multi.post("/admin/models/unload", {"model": "counter"}).json()["status"] == (
        "not_loaded"
    )
    missing = multi.post("/admin/models/load", {"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = multi.post("/admin/models/load", {"model": "counter", "keep_alive": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


def test_a_keep_alive_past_any_clock_keeps_the_model_for_good(multi: Multi) -> None:
    # Found by the fuzzer: this was a 500, and so was every /api/ps and /health after it.
    response = multi.post("/admin/models/load", {"model": "counter", "keep_alive": 1.6e217})
    assert response.status_code == 200, response.text
    assert response.json()["expires_at"] is None
    assert multi.ps()["counter"]["expires_at"] is None
    assert multi.server.health()["status"] == "ok"
    _unload(multi, "counter")


# -- start-up ----------------------------------------------------------------------------------


def test_a_bad_presets_file_fails_serve_at_start_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[models."p"]\nbase = "smollm2:135m"\n[models."p".params]\ntemperature = 9\n')
    result = subprocess.run(
        [sys.executable, "-m", "hearth", "serve", "--config", str(config), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_environ(tmp_path),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "models.p.params.temperature" in lines[-1]
    assert "Traceback" not in result.stderr
