"""Issue 4's fields against the real server: n, logprobs, logit_bias, seeds under load,
response_format, tools, and /v1/completions parity."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer

pytestmark = pytest.mark.server

QUESTION = [{"role": "user", "content": "Name a color."}]

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "pet": {"enum": ["cat", "dog", "none"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a time zone.",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 30}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_n_choices_share_one_prompt_evaluation(server: HearthServer, client: openai.OpenAI) -> None:
    server.wait_idle()  # the server is shared: count this test's prompt only
    before = server.health()["engine"]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a word about the sea, n-test."}],
        n=3,
        max_tokens=12,
        temperature=1.0,
        seed=11,
    )
    after = server.health()["engine"]
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    decoded = after["prompt_tokens_decoded_total"] - before["prompt_tokens_decoded_total"]
    # Once: the prompt minus what the cache held, not three times.
    assert decoded == usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == usage.prompt_tokens
    assert usage.completion_tokens <= 3 * 12
    assert usage.completion_tokens > 12  # counted over every choice


def test_n_choices_stream_with_indexes(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=2, max_tokens=8, stream=True, seed=3
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts[0] and texts[1]


def test_logprobs_have_the_spec_shape_and_real_values(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    total = 0.0
    for entry in content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 5
        values = [top.logprob for top in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        # Greedy: the most likely token is the one emitted.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        total += sum(math.exp(v) for v in values)
    assert total / len(content) <= 1.0 + 1e-6  # probabilities of five tokens never exceed 1


def test_streamed_logprobs_match_the_text(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, stream=True
    )
    text, tokens = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs and choice.logprobs.content:
                tokens += "".join(e.token for e in choice.logprobs.content)
                assert all(not e.top_logprobs for e in choice.logprobs.content)
    assert text and tokens == text


def test_logit_bias_minus_100_bans_a_token(server: HearthServer, client: openai.OpenAI) -> None:
    def greedy(**extra: Any) -> list[str]:
        reply = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, **extra
        )
        content = reply.choices[0].logprobs
        assert content is not None and content.content
        return [entry.token for entry in content.content]

    tokens = greedy()
    banned_text = tokens[0]
    ids = httpx.post(f"{server.base_url}/tokenize", json={"content": banned_text}).json()["tokens"]
    assert len(ids) == 1
    assert banned_text not in greedy(logit_bias={str(ids[0]): -100})


def test_a_seed_repeats_while_other_requests_share_the_batch(
    server: HearthServer, client: openai.OpenAI
) -> None:
    def seeded() -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a short story about a fox."}],
            max_tokens=40,
            temperature=1.0,
            seed=1234,
        )
        return reply.choices[0].message.content or ""

    alone = seeded()
    started = threading.Barrier(4)
    errors: list[BaseException] = []

    def neighbour(i: int) -> None:
        try:
            neighbour_client = server.client()
            stream = neighbour_client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {20 + i}, one number a line."}],
                max_tokens=80,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            first = True
            for _ in stream:
                if first:
                    started.wait(timeout=60)
                    first = False
        except BaseException as exc:
            errors.append(exc)
            started.abort()

    threads = [threading.Thread(target=neighbour, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)
    shared = seeded()
    assert server.health()["slots_in_use"] >= 2  # the neighbours were still streaming
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert shared == alone


@pytest.mark.parametrize("seed", range(10))
def test_json_schema_output_validates(client: openai.OpenAI, seed: int) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
        max_tokens=120,
        temperature=1.0,
        seed=seed,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), PERSON_SCHEMA)


def test_json_object_is_always_json(client: openai.OpenAI) -> None:
    # A free-form object may run past max_tokens on a 135M model (finish_reason "length", as
    # OpenAI documents); every output that ends by itself is an object.
    finished = 0
    for seed in range(5):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
            response_format={"type": "json_object"},
            max_tokens=200,
            temperature=1.0,
            seed=seed,
        )
        if reply.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    assert finished >= 1


def test_required_tool_choice_returns_a_valid_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in SCHEMAS
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and [c.function.name for c in calls] == ["get_time"]
    jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMAS["get_time"])


def test_tool_round_trip_call_result_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80,
        temperature=0,
    )
    message = first.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    history: list[Any] = [
        *WEATHER_QUESTION,
        message.model_dump(exclude_none=True),
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"temperature": 21, "sky": "sunny"}),
        },
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=history,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="auto",
        max_tokens=40,
        temperature=0,
    )
    final = answer.choices[0]
    assert final.finish_reason in ("stop", "length")
    assert final.message.tool_calls is None
    assert final.message.content and final.message.content.strip()


def test_streamed_tool_call_deltas_assemble_into_a_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_QUESTION,
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        temperature=0,
        stream=True,
    )
    name, arguments, ids, finish = "", "", [], None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id:
                    ids.append(delta.id)
                if delta.function and delta.function.name:
                    name += delta.function.name
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert len(ids) == 1 and name in SCHEMAS
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_completions_echo_logprobs_and_lists(server: HearthServer, client: openai.OpenAI) -> None:
    echoed = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text.startswith("The sky is")

    with_logprobs = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=3
    )
    logprobs = with_logprobs.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == with_logprobs.choices[0].text
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.text_offset and logprobs.text_offset[0] == 0
    assert logprobs.top_logprobs and all(len(top) >= 1 for top in logprobs.top_logprobs if top)

    ids = httpx.post(f"{server.base_url}/tokenize", json={"content": "One, two,"}).json()["tokens"]
    many = client.completions.create(
        model=MODEL, prompt=["The sky is", "Grass is"], n=2, max_tokens=3, temperature=0
    )
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    by_tokens = client.completions.create(
        model=MODEL, prompt=[ids, ids], max_tokens=3, temperature=0
    )
    assert len(by_tokens.choices) == 2
    assert by_tokens.choices[0].text == by_tokens.choices[1].text  # same prompt, greedy

    best = client.completions.create(
        model=MODEL, prompt="The sky is", n=1, best_of=3, max_tokens=4, seed=9
    )
    assert len(best.choices) == 1 and best.choices[0].index == 0


def test_extension_samplers_are_honoured(client: openai.OpenAI) -> None:
    for extra in (
        {"mirostat": 2, "mirostat_tau": 3.0},
        {"typical_p": 0.5},
        {"repeat_penalty": 1.3},
    ):
        reply = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=6, seed=1, extra_body=extra
        )
        assert reply.choices[0].message.content


def test_tool_and_format_refusals_name_the_field(server: HearthServer) -> None:
    def error(body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 400, response.text
        detail: dict[str, Any] = response.json()["error"]
        return detail

    base = {"model": MODEL, "messages": WEATHER_QUESTION}
    missing = error(
        {**base, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    )
    assert missing["param"] == "tool_choice"
    bad_name = error({**base, "tools": [{"type": "function", "function": {"name": "a b"}}]})
    assert bad_name["param"] == "tools[0].function.name"
    bad_schema = {"type": "object", "properties": {"x": {"type": "string", "format": "email"}}}
    function = {"name": "f", "parameters": bad_schema, "strict": True}
    tools = [{"type": "function", "function": function}]
    # A strict tool promises its schema whole: a keyword the grammar cannot enforce is a 400.
    unenforceable = error({**base, "tools": tools, "tool_choice": "required"})
    assert unenforceable["param"] == "tools[0].function.parameters"
    assert "format" in unenforceable["message"]
    second = error({**base, "tools": [*TOOLS, *tools], "tool_choice": "required"})
    assert second["param"] == "tools[2].function.parameters"  # the failing one, by position
    both = error({**base, "tools": TOOLS, "response_format": {"type": "json_object"}})
    assert both["param"] == "response_format"
    # Not strict: served without the keyword (docs/generation-fields.md).
    loose = [{"type": "function", "function": {**function, "strict": False}}]
    served = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={**base, "tools": loose, "tool_choice": "required", "max_tokens": 24},
        timeout=60,
    )
    assert served.status_code == 200, served.text


def test_penalties_change_what_greedy_repeats(client: openai.OpenAI) -> None:
    def completion(**extra: Any) -> str:
        reply = client.completions.create(
            model=MODEL, prompt="yes yes yes yes yes yes", max_tokens=24, temperature=0, **extra
        )
        return reply.choices[0].text

    # llama.cpp penalises tokens already generated, so a greedy answer changes once it repeats.
    plain = completion()
    assert completion() == plain
    assert completion(frequency_penalty=2.0, presence_penalty=2.0) != plain
    assert completion(extra_body={"repeat_penalty": 1.5}) != plain
