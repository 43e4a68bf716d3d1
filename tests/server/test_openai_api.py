"""The OpenAI API through the official client, against the real server and model."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer

pytestmark = pytest.mark.server

QUESTION = [{"role": "user", "content": "Name three colors of the rainbow."}]


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == MODEL and "gemma3:270m" in ids  # the startup model, then the bundled
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_answers_with_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens > 10  # the template adds a system prompt
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")


def test_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long essay about the sea."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_stream_equals_non_stream_for_the_same_seed(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 32, "temperature": 0, "seed": 7}
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert all(c.usage is None for c in chunks)


def test_sampling_with_a_seed_is_repeatable(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 1.0}
    first = client.chat.completions.create(seed=42, top_p=0.9, **kwargs)  # type: ignore[call-overload]
    second = client.chat.completions.create(seed=42, top_p=0.9, **kwargs)  # type: ignore[call-overload]
    assert first.choices[0].message.content == second.choices[0].message.content


def test_include_usage_adds_a_final_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert 0 < last.usage.completion_tokens <= 12
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    details = last.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None


def _greedy_pieces(client: openai.OpenAI, prompt: str, max_tokens: int = 40) -> list[str]:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    )
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens_is_never_sent(client: openai.OpenAI, stream: bool) -> None:
    prompt = "Tell me about the moon."
    pieces = _greedy_pieces(client, prompt)
    # A stop string made of the end of one token and the start of the next.
    k = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1])
    stop = pieces[k][-2:] + pieces[k + 1][:1]
    full = "".join(pieces)
    expected = full[: full.index(stop)]

    kwargs = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 40,
        "temperature": 0,
        "stop": ["never-in-the-text", stop],
    }
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
        text, finish = reply.choices[0].message.content or "", reply.choices[0].finish_reason
    assert stop not in text
    assert text == expected
    assert finish == "stop"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 8
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == reply.choices[0].text


def test_completions_defaults_to_16_tokens_and_takes_token_ids(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=[504, 3575, 282], temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 3
    assert reply.usage.completion_tokens == 16
    assert reply.choices[0].finish_reason == "length"


def _tokenize(server: HearthServer, text: str) -> list[int]:
    response = httpx.post(f"{server.base_url}/tokenize", json={"content": text})
    response.raise_for_status()
    tokens: list[int] = response.json()["tokens"]
    return tokens


def test_logit_bias_forces_and_bans_tokens(server: HearthServer, client: openai.OpenAI) -> None:
    prompt = "Count: 1, 2, 3, 4,"
    [banana] = _tokenize(server, " banana")
    forced = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logit_bias={str(banana): 100}
    )
    assert forced.choices[0].text == " banana" * 4

    def first_piece(**extra: object) -> str:
        stream = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=3, temperature=0, stream=True, **extra
        )  # type: ignore[call-overload]
        return next(c.choices[0].text for c in stream if c.choices and c.choices[0].text)

    greedy_first = first_piece()
    [first] = _tokenize(server, greedy_first)
    assert first_piece(logit_bias={str(first): -100}) != greedy_first


def test_tokenize_round_trip(server: HearthServer) -> None:
    tokens = _tokenize(server, "Hello, world!")
    response = httpx.post(f"{server.base_url}/detokenize", json={"tokens": tokens})
    assert response.json() == {"content": "Hello, world!"}


def test_health_reports_slots_and_batching(server: HearthServer) -> None:
    health = server.health()
    assert health["status"] == "ok"
    assert health["model"] == MODEL
    assert health["slots_total"] == 4
    assert health["device"] == "CPU"
    for key in ("slots_in_use", "queue_length", "max_batch_size"):
        assert isinstance(health[key], int)


def test_prometheus_metrics_count_tokens(server: HearthServer, client: openai.OpenAI) -> None:
    def scrape() -> dict[str, float]:
        response = httpx.get(f"{server.base_url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = {}
        for line in response.text.splitlines():
            if line.startswith("hearth_"):
                name, value = line.rsplit(" ", 1)
                samples[name.split("{")[0]] = float(value)
        return samples

    server.wait_idle()  # the server is shared: count this test's tokens only
    before = scrape()
    client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=5, extra_body={"ignore_eos": True}
    )
    after = scrape()
    assert after["hearth_generation_tokens_total"] - before["hearth_generation_tokens_total"] == 5
    assert after["hearth_requests_finished_total"] - before["hearth_requests_finished_total"] == 1
    assert after["hearth_slots"] == 4
