"""Speculative decoding through the real server and the official client: `prediction` and prompt
lookup leave the output as it is (greedy: identical, with flash attention off; sampled: the
same distribution), and usage reports the prediction tokens as OpenAI does."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server
from tests.stats import homogeneity

pytestmark = pytest.mark.server

CODE = """def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)
"""
EDIT = [
    {
        "role": "user",
        "content": "Rename the variable `total` to `acc` in this function and reply with the "
        f"function only.\n\n```python\n{CODE}```",
    }
]
QUOTE = [
    {
        "role": "user",
        "content": "The lighthouse on the headland was first lit on 3 March 1881. Its lamp "
        "burned paraffin until 1923, when it was converted to electricity.\n\nRepeat the text "
        "above word for word.",
    }
]
PREDICTION = f"```python\n{CODE}```"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HearthServer]]:
    """The same model with and without speculation, flash attention off on both."""
    common = ("--parallel", "2", "--ctx-size", "1024", "--flash-attn", "off")
    plain = start_server(tmp_path_factory.mktemp("plain"), *common, "--speculation", "off")
    try:
        speculative = start_server(tmp_path_factory.mktemp("spec"), *common, "--speculation", "on")
    except BaseException:
        plain.stop()
        raise
    try:
        yield {"off": plain, "on": speculative}
    finally:
        speculative.stop()
        plain.stop()


def chat(server: HearthServer, **body: Any) -> Any:
    return server.client().chat.completions.create(model=MODEL, **body)


def test_greedy_output_is_identical_with_a_prediction(servers: dict[str, HearthServer]) -> None:
    body = {"messages": EDIT, "max_tokens": 60, "temperature": 0}
    plain = chat(servers["off"], **body)
    predicted = chat(servers["on"], prediction={"type": "content", "content": PREDICTION}, **body)
    assert predicted.choices[0].message.content == plain.choices[0].message.content
    assert predicted.choices[0].finish_reason == plain.choices[0].finish_reason
    assert predicted.usage.completion_tokens == plain.usage.completion_tokens
    details = predicted.usage.completion_tokens_details
    assert details is not None
    assert details.accepted_prediction_tokens > 0  # the model copies most of the function
    plain_details = plain.usage.completion_tokens_details
    assert plain_details is not None and plain_details.accepted_prediction_tokens == 0
    engine = servers["on"].health()["engine"]
    assert engine["draft_tokens_accepted_total"] > 0
    # Steps of one row and of several were timed: what auto sizes its drafts by.
    costs = engine["step_ms_by_rows"]
    assert "1" in costs and len(costs) >= 2 and all(ms > 0 for ms in costs.values())


def test_greedy_output_is_identical_with_prompt_lookup(servers: dict[str, HearthServer]) -> None:
    body = {"messages": QUOTE, "max_tokens": 40, "temperature": 0}
    before = servers["on"].health()["engine"]["draft_tokens_total"]
    plain = chat(servers["off"], **body)
    looked_up = chat(servers["on"], **body)
    assert looked_up.choices[0].message.content == plain.choices[0].message.content
    assert servers["on"].health()["engine"]["draft_tokens_total"] > before


def test_prediction_as_text_parts_streams_the_same_text(
    servers: dict[str, HearthServer],
) -> None:
    body = {"messages": EDIT, "max_tokens": 30, "temperature": 0}
    plain = chat(servers["off"], **body).choices[0].message.content
    parts = [{"type": "text", "text": PREDICTION[:20]}, {"type": "text", "text": PREDICTION[20:]}]
    chunks = list(
        chat(
            servers["on"],
            prediction={"type": "content", "content": parts},
            stream=True,
            stream_options={"include_usage": True},
            **body,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_stop_logprobs_and_n_keep_working(servers: dict[str, HearthServer]) -> None:
    body = {
        "messages": EDIT,
        "max_tokens": 40,
        "temperature": 0,
        "stop": ["len("],
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
    }
    plain = chat(servers["off"], **body)
    predicted = chat(servers["on"], prediction={"type": "content", "content": PREDICTION}, **body)
    for ours, theirs in zip(predicted.choices, plain.choices, strict=True):
        assert ours.message.content == theirs.message.content
        assert ours.finish_reason == theirs.finish_reason
        assert ours.logprobs is not None and theirs.logprobs is not None
        tokens = [t.token for t in ours.logprobs.content]
        assert tokens == [t.token for t in theirs.logprobs.content]
        # KV cells written by a step of many rows hold slightly different floats than those of
        # one-row steps (docs/speculation.md): the same tokens, probabilities within 0.05.
        for mine, other in zip(ours.logprobs.content, theirs.logprobs.content, strict=True):
            assert math.exp(mine.logprob) == pytest.approx(math.exp(other.logprob), abs=0.05)


def test_a_grammar_holds_with_a_prediction_that_breaks_it(
    servers: dict[str, HearthServer],
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    body = {
        "messages": [{"role": "user", "content": "Invent a person, as JSON."}],
        "max_tokens": 40,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    }
    plain = chat(servers["off"], **body).choices[0].message.content
    # A prediction that starts as the answer does, then leaves the grammar.
    prediction = plain[:8] + ' "not": [json'
    predicted = chat(servers["on"], prediction={"type": "content", "content": prediction}, **body)
    assert predicted.choices[0].message.content == plain
    json.loads(plain)


def test_penalties_see_only_the_tokens_kept(servers: dict[str, HearthServer]) -> None:
    """Penalties steer the output away from the prediction, so drafts get rejected; the chain's
    penalty state must hold the kept tokens only, or the outputs would part."""
    body = {
        "messages": EDIT,
        "max_tokens": 48,
        "temperature": 0,
        "presence_penalty": 1.5,
        "frequency_penalty": 1.0,
    }
    plain = chat(servers["off"], **body)
    predicted = chat(servers["on"], prediction={"type": "content", "content": PREDICTION}, **body)
    assert predicted.choices[0].message.content == plain.choices[0].message.content
    details = predicted.usage.completion_tokens_details
    assert details is not None and details.rejected_prediction_tokens > 0


@pytest.mark.parametrize(
    "prediction",
    [{"type": "file", "content": "x"}, {"type": "content", "content": 3}, {"content": "x"}],
)
def test_a_malformed_prediction_is_a_400_naming_it(
    servers: dict[str, HearthServer], prediction: object
) -> None:
    response = httpx.post(
        f"{servers['on'].base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": EDIT, "max_tokens": 1, "prediction": prediction},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith("prediction")


def test_sampling_with_drafts_keeps_the_token_distribution(
    servers: dict[str, HearthServer], tmp_path: Path
) -> None:
    """A chi-square test over seeded samples of a short continuation: with a prediction the
    model often agrees with and often not, the continuations are distributed as without."""
    messages = [{"role": "user", "content": "Count from one to ten in words."}]
    prediction = "One, two, three, four, five"
    samples: dict[str, Counter[str]] = {"off": Counter(), "on": Counter()}
    seeds = {"off": range(100), "on": range(1000, 1100)}
    for name, server in servers.items():
        client = server.client()
        extra = {"prediction": {"type": "content", "content": prediction}} if name == "on" else {}
        for seed in seeds[name]:
            reply = client.chat.completions.create(
                model=MODEL,
                seed=seed,
                extra_body={"top_k": 0, "min_p": 0.0},  # the whole distribution
                messages=messages,  # type: ignore[arg-type]
                max_tokens=3,
                temperature=1.0,
                **extra,  # type: ignore[arg-type]
            )
            samples[name][reply.choices[0].message.content or ""] += 1
    engine = servers["on"].health()["engine"]
    accepted, drafted = engine["draft_tokens_accepted_total"], engine["draft_tokens_total"]
    assert 0 < accepted < drafted, "the drafts were all accepted or all refused: no test"
    assert len(samples["off"]) > 3, "too few distinct continuations to compare"
    assert homogeneity(samples["on"], samples["off"]) > 0.001


def test_prediction_tokens_are_counted_as_openai_counts_them_even_when_off(
    servers: dict[str, HearthServer],
) -> None:
    """Accepted: the prediction's tokens the output holds; rejected: the rest of them, whether
    any was drafted or not."""
    for mode in ("off", "on"):
        reply = chat(
            servers[mode],
            messages=EDIT,
            max_tokens=12,
            temperature=0,
            prediction={"type": "content", "content": PREDICTION},
        )
        details = reply.usage.completion_tokens_details
        assert details is not None
        predicted = httpx.post(
            f"{servers[mode].base_url}/tokenize", json={"content": PREDICTION}, timeout=30
        ).json()["tokens"]
        accepted, rejected = details.accepted_prediction_tokens, details.rejected_prediction_tokens
        assert accepted is not None and rejected is not None
        assert accepted + rejected == len(predicted)
        assert 0 < accepted <= reply.usage.completion_tokens  # the reply starts as predicted


def test_the_flag_is_validated(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="speculation"):
        start_server(tmp_path, "--speculation", "sometimes")
