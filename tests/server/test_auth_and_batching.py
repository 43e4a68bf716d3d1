"""Servers with their own settings: API keys, CORS, 8 parallel streams, cancellation."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer, free_port, start_server

pytestmark = pytest.mark.server

CHAT = [{"role": "user", "content": "Hi"}]


@pytest.fixture()
def keyed_server(tmp_path: Path) -> Iterator[HearthServer]:
    # One key from the flag, two from the env: every one of them works.
    with start_server(
        tmp_path,
        "--api-key",
        "flag-key",
        "--cors-origin",
        "http://localhost:3000",
        env={"HEARTH_API_KEY": "env-key-1,env-key-2"},
        api_key="flag-key",
    ) as server:
        yield server


def test_auth_on(keyed_server: HearthServer) -> None:
    ok = keyed_server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    assert ok.choices[0].message.content is not None
    # The flag wins over the env, as every setting does.
    with pytest.raises(openai.AuthenticationError) as wrong:
        keyed_server.client(api_key="env-key-1").models.list()
    assert wrong.value.status_code == 401
    body = wrong.value.body
    assert isinstance(body, dict) and body["type"] == "authentication_error"

    missing = httpx.get(f"{keyed_server.base_url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert httpx.post(f"{keyed_server.base_url}/tokenize", json={"content": "x"}).status_code == 401
    # Health stays open for supervisors and load balancers.
    assert httpx.get(f"{keyed_server.base_url}/health").status_code == 200


def test_several_keys_from_the_env(tmp_path: Path) -> None:
    with start_server(tmp_path, env={"HEARTH_API_KEY": "env-key-1,env-key-2"}) as server:
        for key in ("env-key-1", "env-key-2"):
            assert server.client(api_key=key).models.list().data[0].id == MODEL
        with pytest.raises(openai.AuthenticationError):
            server.client(api_key="env-key-3").models.list()


def test_cors_only_for_listed_origins(keyed_server: HearthServer, server: HearthServer) -> None:
    preflight = {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{keyed_server.base_url}/v1/chat/completions", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == "http://localhost:3000"
    other = httpx.options(
        f"{keyed_server.base_url}/v1/chat/completions",
        headers={**preflight, "Origin": "http://evil.example"},
    )
    assert "access-control-allow-origin" not in other.headers
    # The default server has CORS off entirely.
    default = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in default.headers


def test_auth_off_by_default(client: openai.OpenAI) -> None:
    assert client.models.list().data[0].id == MODEL


def test_eight_streams_are_decoded_together(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "8") as server:
        assert server.health()["max_batch_size"] == 0

        async def one(i: int, client: openai.AsyncOpenAI) -> tuple[str, str | None, int]:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Give me fact number {i} about cats."}],
                max_tokens=48,
                temperature=0.7,
                seed=i,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, finish, tokens = "", None, 0
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
            return text, finish, tokens

        async def all_of_them() -> list[tuple[str, str | None, int]]:
            async with server.async_client() as client:
                return await asyncio.gather(*(one(i, client) for i in range(8)))

        results = asyncio.run(all_of_them())
        for text, finish, tokens in results:
            assert finish in ("stop", "length")
            assert text.strip() and "\ufffd" not in text
            assert 0 < tokens <= 48
        assert len({text for text, _, _ in results}) > 1  # distinct prompts and seeds
        health = server.health()
        assert health["max_batch_size"] >= 4
        assert health["slots_in_use"] == 0 and health["queue_length"] == 0


def test_a_closed_stream_frees_its_slot_at_once(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "1") as server:
        client = server.client()
        long_story = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write a very long story."}],
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received = 0
        for chunk in long_story:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received == 5:
                break
        long_story.close()  # the client walks away mid-stream

        deadline = time.monotonic() + 30
        while server.health()["slots_in_use"] and time.monotonic() < deadline:
            time.sleep(0.05)
        # The one slot is free long before 3000 tokens could have been generated.
        assert server.health()["slots_in_use"] == 0
        reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
        assert reply.choices[0].message.content is not None
        engine = server.health()["engine"]
        assert engine["generated_tokens_total"] < 1000
        assert engine["requests_finished"] == 2
        assert "Traceback" not in server.log()


def test_a_non_streaming_client_that_leaves_is_aborted(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "1") as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Write a very long story."}],
                    "max_tokens": 3000,
                    "ignore_eos": True,
                },
                timeout=1.0,
            )
        deadline = time.monotonic() + 30
        while server.health()["slots_in_use"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.health()["slots_in_use"] == 0
        assert server.health()["engine"]["generated_tokens_total"] < 1000
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    server = start_server(tmp_path)
    assert server.stop(sig) == 0
    assert "Traceback" not in server.log()
    assert "Hearth ready on http://127.0.0.1:" in server.log()


def test_a_stop_mid_stream_ends_running_requests_with_an_error(tmp_path: Path) -> None:
    """SIGTERM while a stream and a plain request run: once --drain-timeout (2 s) has passed,
    both end with 503 server_shutting_down (an error event for the stream, not a cut socket),
    and the server exits 0."""
    long_request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
    }

    async def run() -> tuple[list[str], httpx.Response, float]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            plain = asyncio.create_task(http.post("/v1/chat/completions", json=long_request))
            events: list[str] = []
            stopped_at = 0.0
            async with http.stream(
                "POST", "/v1/chat/completions", json={**long_request, "stream": True}
            ) as stream:
                async for line in stream.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[len("data: ") :])
                    if len(events) == 3:
                        stopped_at = time.monotonic()
                        server.process.send_signal(signal.SIGTERM)
            ended_after = time.monotonic() - stopped_at
            return events, await plain, ended_after

    with start_server(tmp_path, "--parallel", "2", "--drain-timeout", "2") as server:
        events, plain, ended_after = asyncio.run(run())
        exit_code = server.process.wait(timeout=20)
    # The 2 s drain, well before uvicorn's 10 s deadline; the generation would take ~20 s.
    assert 1.5 < ended_after < 9.5
    assert events[-1] == "[DONE]", events[-3:]
    last = json.loads(events[-2])
    assert last["error"]["code"] == "server_shutting_down", events[-3:]
    assert last["error"]["type"] == "server_error"
    assert plain.status_code == 503
    assert plain.json()["error"]["code"] == "server_shutting_down"
    assert exit_code == 0
    assert "Traceback" not in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()


def test_any_gguf_path_is_served_under_its_stem(tmp_path: Path) -> None:
    from hearth.models.registry import embedded_model_path

    model_file = tmp_path / "my-model.gguf"
    model_file.symlink_to(embedded_model_path())
    with start_server(tmp_path, "--model", str(model_file), "--ctx-size", "512") as server:
        client = server.client()
        # The startup model comes first; the embedded one stays available, loaded on demand.
        assert client.models.list().data[0].id == "my-model"
        reply = client.chat.completions.create(model="my-model", messages=CHAT, max_tokens=3)
        assert reply.model == "my-model"
        assert server.health()["n_ctx_per_slot"] == 512
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="my-other-model", messages=CHAT, max_tokens=3)


def test_a_missing_model_file_fails_at_start_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"no such model file"):
        start_server(tmp_path, "--model", str(tmp_path / "absent.gguf"))


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--parallel", "64", "--max-batch-tokens", "32"], 2, "must be at least parallel"),
        (["--port", "70000"], 2, "--port"),
        (["--ctx-size", "50000000"], 1, "could not create a context"),
    ],
)
def test_bad_settings_fail_at_start_with_one_clear_line(
    args: list[str], exit_code: int, message: str
) -> None:
    port = [] if "--port" in args else ["--port", str(free_port())]
    result = subprocess.run(
        [sys.executable, "-m", "hearth", "serve", *port, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == exit_code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_quantize_converts_once_into_the_home_and_serves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HEARTH_HOME": str(home)}
    with start_server(tmp_path, "--quantize", "q8_0", "--ctx-size", "512", env=env) as server:
        reply = server.client().chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    [converted] = (home / "quantized").iterdir()
    assert converted.name == "SmolLM2-135M-Instruct.Q4_1.q8_0.gguf"
    from gguf import GGUFReader

    file_type = GGUFReader(converted).get_field("general.file_type")
    assert file_type is not None and file_type.contents() == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    first_write = converted.stat().st_mtime_ns
    with start_server(tmp_path, "--quantize", "q8_0", "--ctx-size", "512", env=env):
        pass
    assert converted.stat().st_mtime_ns == first_write  # reused, not converted again


def test_stored_responses_belong_to_the_key_that_created_them(tmp_path: Path) -> None:
    with start_server(tmp_path, "--api-key", "alice", "--api-key", "bob") as server:
        alice, bob = server.client(api_key="alice"), server.client(api_key="bob")
        stored = alice.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
        assert alice.responses.retrieve(stored.id).id == stored.id
        assert alice.responses.input_items.list(stored.id).data
        # Another key finds nothing: not to read, list, continue nor delete.
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(stored.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.input_items.list(stored.id)
        with pytest.raises(openai.NotFoundError) as continued:
            bob.responses.create(
                model=MODEL, input="And?", previous_response_id=stored.id, max_output_tokens=2
            )
        assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(stored.id)
        assert alice.responses.retrieve(stored.id).id == stored.id  # bob's delete did nothing
        followed = alice.responses.create(
            model=MODEL, input="And?", previous_response_id=stored.id, max_output_tokens=2
        )
        assert followed.previous_response_id == stored.id
        alice.responses.delete(stored.id)


def test_the_api_description_is_public_and_holds_no_data(keyed_server: HearthServer) -> None:
    # Decided (README, "Keys and web pages"): /openapi.json, /docs and /redoc describe the API,
    # as its source does; a supervisor or a client generator may read them without a key.
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{keyed_server.base_url}{path}").status_code == 200, path
    # The data routes they describe still need the key.
    assert httpx.get(f"{keyed_server.base_url}/v1/responses/resp_x").status_code == 401
    assert httpx.get(f"{keyed_server.base_url}/api/tags").status_code == 401


def test_serve_help_says_what_the_key_covers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hearth", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    line = " ".join(result.stdout.split())
    assert "--api-key TEXT API keys (Bearer or x-api-key) for /v1, /api, /admin" in line
