"""Eviction in a real server with --max-loaded-models 1: an idle model makes room, a busy one
(mid-stream) never does; the other request waits, or gets a 503 past --queue-timeout. The
server is keyed, so the admin routes' auth is tested here too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import start_server
from tests.server.models_helpers import HELLO, Multi, served_models

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Multi]:
    """At most one model loaded; keyed, so the admin routes need the key."""
    tmp = tmp_path_factory.mktemp("single")
    flags, startup, other = served_models(tmp)
    args = [*flags, "--max-loaded-models", "1", "--parallel", "1", "--ctx-size", "1024"]
    with start_server(tmp, *args, "--api-key", "sekret", api_key="sekret") as server:
        yield Multi(server, startup, other)


KEY = {"Authorization": "Bearer sekret"}


def test_an_idle_model_is_evicted_for_another(single: Multi) -> None:
    client = single.server.client()
    for name in (single.other, single.startup, single.other):
        reply = client.completions.create(model=name, prompt="Hi", max_tokens=2)
        assert reply.model == name
        assert list(single.ps(headers=KEY)) == [name]
    assert f"Unloaded {single.startup} (to make room for {single.other})" in single.server.log()


def test_a_streaming_model_is_never_evicted_the_other_request_waits(single: Multi) -> None:
    client = single.server.client()
    client.completions.create(model=single.startup, prompt="Hi", max_tokens=1)
    stream = client.chat.completions.create(
        model=single.startup,
        messages=HELLO,
        max_tokens=400,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    other: dict[str, Any] = {}

    def ask_other() -> None:
        other["reply"] = single.server.client().completions.create(
            model=single.other, prompt="Hi", max_tokens=2
        )

    waiting = threading.Thread(target=ask_other)
    waiting.start()
    time.sleep(0.3)
    # Mid-stream: the other request waits, and the streaming model is still the one loaded.
    assert waiting.is_alive()
    running = single.ps(headers=KEY)
    assert list(running) == [single.startup] and running[single.startup]["slots_in_use"] == 1
    rest = list(chunks)
    waiting.join(timeout=60)
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    finishes = [c.choices[0].finish_reason for c in rest if c.choices]
    finishes = [f for f in finishes if f is not None]
    usage = rest[-1].usage
    assert finishes == ["length"] and usage is not None and usage.completion_tokens == 400
    assert text  # the stream completed intact: every token, its finish, its usage
    assert other["reply"].model == single.other
    assert list(single.ps(headers=KEY)) == [single.other]


def test_admin_routes_need_the_key(single: Multi) -> None:
    for path, body in (
        ("/admin/models/load", {"model": single.startup}),
        ("/admin/models/unload", {"model": single.startup}),
    ):
        refused = single.post(path, body)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert single.post(path, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert single.get("/api/ps").status_code == 401
    loaded = single.post("/admin/models/load", {"model": single.startup}, headers=KEY)
    assert loaded.status_code == 200 and list(single.ps(headers=KEY)) == [single.startup]
    unloaded = single.post("/admin/models/unload", {"model": single.startup}, headers=KEY)
    assert unloaded.json()["status"] == "unloaded"
    assert single.ps(headers=KEY) == {}
    # With nothing loaded, /health still answers for the startup model.
    health = single.get("/health").json()
    assert health["model"] == single.startup and health["model_loaded"] is False
    assert (health["slots_total"], health["n_ctx_per_slot"]) == (1, 1024)


def test_models_busy_past_the_queue_timeout_get_a_503(tmp_path: Path) -> None:
    flags, startup, other = served_models(tmp_path)
    args = [*flags, "--max-loaded-models", "1", "--parallel", "1", "--queue-timeout", "1"]
    with start_server(tmp_path, *args) as server:
        client = server.client()
        stream = client.completions.create(
            model=startup,
            prompt="Once upon a time",
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        next(chunks)
        with pytest.raises(openai.InternalServerError) as caught:
            server.client().completions.create(model=other, prompt="Hi", max_tokens=1)
        assert caught.value.status_code == 503
        body: dict[str, Any] = caught.value.body  # type: ignore[assignment]
        assert body["code"] == "models_busy" and startup in body["message"]
        # The stream goes on, untouched; closing it ends it (and frees the model).
        assert next(chunks).choices[0].finish_reason is None
        stream.close()
