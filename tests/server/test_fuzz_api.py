"""Schemathesis fuzzes every operation in the real server's /openapi.json: schema-valid and
schema-violating requests, checked for no 5xx, errors in the route's own shape, responses as
documented (status, content type, body; a stream event by event or line by line) and invalid
input refused.

One server of its own with a small context (256 tokens, 2 slots): a fuzzed `max_tokens` past
the context would run to its end (a ceiling, not a promise), so every limit that decodes is
capped (cap_generation).
Its hub (HF_ENDPOINT, for /api/pull) is the loopback fake with no repos, and so is its OCI
registry (Ollama's and Docker's names): a fuzzed name is a 404 from them, never a request to the
internet.
The run is bounded and reproducible: a few examples per operation, derandomized.

Schemathesis' own pytest plugin is off (pyproject.toml: its lazy `from_fixture` schemas use
pytest internals that pytest 9 removed), so each operation is a plain parametrized test that
draws cases from `operation.as_strategy()` with Hypothesis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.models.fake_hub import FakeHub, running_hub
from tests.models.fake_registry import FakeRegistry, running_registry
from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

CTX_SIZE = 256
MAX_NEW_TOKENS = 8

# Every operation the server documents; test_every_operation_is_fuzzed keeps this list whole.
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("GET", "/v1/responses/{response_id}/input_items"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/embeddings"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("GET", "/api/tags"),
    ("POST", "/api/show"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    # Only bundled, served and unknown names: the store here is empty, the hub has no repos.
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/copy"),
    ("POST", "/api/create"),
    ("HEAD", "/api/blobs/{digest}"),
    ("POST", "/api/blobs/{digest}"),
    ("GET", "/api/version"),
    ("GET", "/api/ps"),
    ("POST", "/admin/models/load"),
    # Fuzzed with generated names only (see flatmap_body): unloading the model under
    # test would make every later example reload it; the only other model, the bundled Gemma,
    # is too big to load and unload here. test_models_in_server.py covers unloading.
    ("POST", "/admin/models/unload"),
]

HI = [{"role": "user", "content": "Hi"}]
JSON_OBJECT = {"type": "json_object"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# Generated bodies seldom get past validation to an answer, let alone a stream: these requests
# run first on every run (Hypothesis' explicit examples) and are checked the same way.
SEEDS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("POST", "/v1/chat/completions"): [
        {
            "model": MODEL,
            "messages": HI,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "top_logprobs": 2,
        },
        {"model": MODEL, "messages": HI, "max_tokens": 24, "tools": [WEATHER], "stream": True},
        {"model": MODEL, "messages": HI, "max_tokens": 24, "tools": [WEATHER], "n": 2},
        {"model": MODEL, "messages": HI, "max_tokens": 9, "response_format": JSON_OBJECT},
    ],
    ("POST", "/v1/completions"): [
        {"model": MODEL, "prompt": "Once upon", "max_tokens": 8, "stream": True, "logprobs": 2},
        {"model": MODEL, "prompt": ["One", "Two"], "max_tokens": 4, "n": 2, "echo": True},
        {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 4, "best_of": 2},
    ],
    ("POST", "/v1/embeddings"): [
        {"model": MODEL, "input": ["Hi", "there"], "encoding_format": "base64"},
    ],
    ("POST", "/v1/responses"): [
        {"model": MODEL, "input": "Hi", "max_output_tokens": 8, "stream": True},
        {
            "model": MODEL,
            "input": [{"role": "user", "content": "Hi"}],
            "tools": [{"type": "function", **WEATHER["function"]}],
            "tool_choice": "required",
            "max_output_tokens": 24,
            "stream": True,
        },
        {
            "model": MODEL,
            "input": "Hi",
            "text": {"format": {"type": "json_object"}},
            "max_output_tokens": 9,
            "store": False,
        },
    ],
    ("POST", "/v1/messages"): [
        {"model": MODEL, "messages": HI, "max_tokens": 8, "stream": True},
        {
            "model": MODEL,
            "messages": HI,
            "max_tokens": 24,
            "tools": [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}],
            "tool_choice": {"type": "any"},
            "stream": True,
        },
        {"model": MODEL, "messages": HI, "max_tokens": 8, "stop_sequences": ["e"]},
    ],
    ("POST", "/v1/messages/count_tokens"): [{"model": MODEL, "messages": HI}],
    ("POST", "/api/chat"): [
        {"model": MODEL, "messages": HI, "options": {"num_predict": 8}},
        {"model": MODEL, "messages": HI, "tools": [WEATHER], "options": {"num_predict": 24}},
        {"model": MODEL, "messages": HI, "stream": False, "format": "json", "logprobs": True},
    ],
    ("POST", "/api/generate"): [
        {"model": MODEL, "prompt": "Once upon", "options": {"num_predict": 8}, "logprobs": True},
        {"model": MODEL, "prompt": "Once", "raw": True, "stream": False},
    ],
    ("POST", "/api/embed"): [
        {"model": MODEL, "input": ["Hi", "there, and a longer one"], "options": {"num_ctx": 4}},
        {"model": MODEL, "input": "Hi", "truncate": False, "dimensions": 576},
    ],
    ("POST", "/api/embeddings"): [{"model": MODEL, "prompt": "Hi"}],
    ("POST", "/api/pull"): [
        {"model": MODEL},
        {"model": MODEL, "stream": False},
        {"model": "hf.co/hearth-test/Nope:Q4_K_M"},
    ],
    ("DELETE", "/api/delete"): [{"model": MODEL}, {"model": "hf.co/hearth-test/Nope:Q4_K_M"}],
    ("POST", "/api/create"): [
        {"model": "fuzz:created", "from": MODEL, "system": "Hi", "parameters": {"top_k": 5}},
        {"model": "fuzz:go", "from": MODEL, "template": "{{ .Prompt }}", "stream": False},
    ],
    ("POST", "/api/copy"): [
        {"source": MODEL, "destination": "fuzz:copy"},
        {"source": MODEL, "destination": MODEL},
        {"source": "nope:1b", "destination": "fuzz:other"},
    ],
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    # Streams included: Schemathesis reads text/event-stream event by event against the
    # documented event schema; NDJSON, which it cannot read, is checked by ndjson_lines below.
    response_schema_conformance,
    negative_data_rejection,
    # Left out: positive_data_acceptance (a schema-valid request must not get a 400). Hearth
    # declares OpenAI's fields it refuses by name (`audio`, `store: true`…, a 400
    # unsupported_parameter) and refuses what depends on the model, which no schema can say:
    # a prompt past the context, `n` over the slots, token ids outside the vocabulary.
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    args = ["--ctx-size", str(CTX_SIZE), "--parallel", "2"]
    with running_hub(FakeHub()) as hub, running_registry(FakeRegistry()) as registry:
        env = {
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_OFFLINE": "0",
            "HEARTH_OLLAMA_REGISTRY": registry.url,
            "HEARTH_REGISTRIES": f"docker.io={registry.url}",
        }
        with start_server(tmp, *args, env=env) as server:
            yield server


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as opened:
        yield opened


@pytest.fixture(scope="module")
def api_schema(fuzz_server: HearthServer) -> Any:
    # Streams are read whole (at most ~2 x 256 tokens here): Schemathesis stops reading one after
    # 20 events by default, and then nothing can be said about how it ends. No schemathesis.toml
    # from the working directory is read either.
    config = schemathesis.Config.from_dict({"max-stream-events": 1000})
    url = f"{fuzz_server.base_url}/openapi.json"
    schema = schemathesis.openapi.from_url(url, config=config, timeout=30)

    @schema.hook
    def map_body(context: schemathesis.HookContext, body: Any) -> Any:
        return cap_generation(context.operation.path if context.operation else "", body)

    # A generated model name is almost never a served one, so a request would stop at the 404:
    # half the examples name the model under test instead, and get past it.
    @schema.hook
    def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
        unload = context.operation is not None and context.operation.path.endswith("/unload")
        if unload or not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return st.just(body)
        return st.sampled_from([body["model"], MODEL]).map(lambda name: {**body, "model": name})

    @schema.hook
    def flatmap_path_parameters(
        context: schemathesis.HookContext, parameters: dict[str, Any] | None
    ) -> Any:
        if not parameters or not isinstance(parameters.get("model_id"), str):
            return st.just(parameters)
        return st.sampled_from([parameters["model_id"], MODEL]).map(
            lambda name: {**parameters, "model_id": name}
        )

    return schema


def _capped(limit: Any) -> Any:
    """No limit, or one that would decode more, becomes MAX_NEW_TOKENS; any other value is sent
    as generated (not a positive integer: refused)."""
    decodes = isinstance(limit, int | float) and not isinstance(limit, bool) and limit % 1 == 0
    if limit is None or (decodes and limit > MAX_NEW_TOKENS):
        return MAX_NEW_TOKENS
    return limit


def cap_generation(path: str, body: Any) -> Any:
    """A generation without a limit runs to the end of its slot: ~250 tokens here, twice with
    `n: 2`. That takes seconds on a quiet machine, but in a full test run beside other work on
    the 2 cores one such request passed the 60 s read timeout (llama.cpp's threads spin while
    they wait for each other). So the limits that would decode (none, or one up to the context)
    are capped at 8 tokens; the requests are otherwise as generated."""
    if not isinstance(body, dict):
        return body
    if path == "/v1/chat/completions":
        capped = {**body, "max_tokens": _capped(body.get("max_tokens"))}
        if capped.get("max_completion_tokens") is not None:
            capped["max_completion_tokens"] = _capped(capped["max_completion_tokens"])
        return capped
    if path == "/v1/responses":
        return {**body, "max_output_tokens": _capped(body.get("max_output_tokens"))}
    if path == "/v1/messages":  # max_tokens is required there
        if "max_tokens" in body:
            return {**body, "max_tokens": _capped(body["max_tokens"])}
        return body
    if path == "/v1/completions":  # an absent max_tokens is 16, as in the spec
        return {**body, "max_tokens": _capped(body["max_tokens"])} if "max_tokens" in body else body
    if path in ("/api/chat", "/api/generate"):
        options = body.get("options")
        if options is None:
            return {**body, "options": {"num_predict": MAX_NEW_TOKENS}}
        if isinstance(options, dict):
            predict = options.get("num_predict")
            predict = None if predict in (-1, -2) else predict  # Ollama's "no limit" forms
            return {**body, "options": {**options, "num_predict": _capped(predict)}}
    return body


@schemathesis.check
def error_shape(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """An error is OpenAI's {"error": {"message", "type", "param", "code"}}, except on /api/,
    which answers as Ollama does: {"error": "<message>"}, and on /v1/messages, which answers as
    Anthropic does: {"type": "error", "error": {"type", "message"}}."""
    if response.status_code < 400 or case.method == "HEAD":  # a HEAD reply has no body
        return None
    body = response.json()
    if case.operation.path.startswith("/v1/messages"):
        assert isinstance(body, dict) and body.get("type") == "error", body
        assert set(body["error"]) == {"type", "message"}, f"not Anthropic's shape: {body}"
        assert body["error"]["type"] and body["error"]["message"], body
        return None
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an error body: {body}"
    error = body["error"]
    if case.operation.path.startswith("/api/"):
        assert isinstance(error, str) and error, f"not Ollama's error shape: {body}"
        return None
    assert isinstance(error, dict), f"not OpenAI's error shape: {body}"
    assert set(error) == {"message", "type", "param", "code"}, f"not OpenAI's error shape: {body}"
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body
    return None


@schemathesis.check
def ndjson_lines(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """Each line of an NDJSON stream is what /openapi.json documents for one line, and the
    stream ends with its `done` line (a pull's `success`) or an error line."""
    if not response.headers.get("content-type", [""])[0].startswith("application/x-ndjson"):
        return None
    document = case.operation.schema.raw_schema
    responses = document["paths"][case.operation.path][case.operation.method.lower()]["responses"]
    line_schema = responses[str(response.status_code)]["content"]["application/x-ndjson"]["schema"]
    validator = jsonschema.Draft202012Validator(
        {**line_schema, "components": document["components"]}
    )
    lines = [json.loads(line) for line in response.text.splitlines() if line]
    assert lines, "an empty NDJSON stream"
    for line in lines:
        problems = [error.message for error in validator.iter_errors(line)]
        assert not problems, f"an NDJSON line not as documented: {line}: {problems}"
    last = lines[-1]
    ended = last.get("done") is True or last.get("status") == "success" or "error" in last
    assert ended, f"cut short: {last}"
    return None


@schemathesis.check
def event_stream_ends(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """An SSE stream ends with `data: [DONE]` (OpenAI's chat and completions), with its final
    named event (`response.completed`/`.incomplete`, Anthropic's `message_stop`), or with the
    error event that cut it short."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    assert not response.stream_cut_short, "read only part of the stream: raise max-stream-events"
    events = [part for part in response.text.split("\n\n") if part.strip()]
    assert events, "an empty event stream"
    last = events[-1]
    endings = (
        "event: response.completed\n",
        "event: response.incomplete\n",
        "event: message_stop\n",
        "event: error\n",
    )
    named_end = last.startswith(endings)
    assert last == "data: [DONE]" or last.startswith('data: {"error"') or named_end, last
    return None


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {
        (method.upper(), path)
        for path, item in api_schema.raw_schema["paths"].items()
        for method in item
    }
    assert documented == set(OPERATIONS)


def seeded(operation: Any, bodies: list[dict[str, Any]]) -> Any:
    """Hypothesis' @example for each body, run before the generated cases."""

    def decorate(test: Any) -> Any:
        for body in reversed(bodies):
            test = example(case=operation.Case(body=body))(test)
        return test

    return decorate


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(api_schema: Any, session: requests.Session, method: str, path: str) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode
    )

    @given(case=cases)
    @seeded(operation, SEEDS.get((method, path), []))
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        # Drawing from the chat schemas can take a while on a busy 2-core machine: no bug.
        suppress_health_check=[HealthCheck.too_slow],
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(
            session=session,
            timeout=30,
            checks=[*CHECKS, error_shape, ndjson_lines, event_stream_ends],
        )

    fuzz()


# -- hostile input (issue 22) -------------------------------------------------------------------
# Schema-valid bodies from the same operations, each then made hostile in one way: what found
# 500s, hangs and memory blow-ups before. Never a 5xx but the overloads, never a traceback, and
# the server's resident memory grows at most 64 MiB plus twice the body per request.

HOSTILE_OPERATIONS = [
    (method, path)
    for method, path in OPERATIONS
    if method in ("POST", "DELETE") and "{" not in path
]
HOSTILE_KINDS = ("surrogate", "huge_number", "deep", "long_name", "schema_bounds", "origin")
NAME_FIELDS = ("model", "name", "source", "destination", "from")
HUGE = "@@HUGE@@"  # replaced in the JSON text: a number json.dumps could not write
DEEP = "@@DEEP@@"  # replaced too: nesting json.dumps would recurse into too deep
BOUNDED_SCHEMA_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) in a JSON value, the value itself included."""
    found = [(path, value)]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _leaves(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found += _leaves(child, (*path, i))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    copied = list(value)
    copied[head] = _replaced(copied[head], rest, new)
    return copied


def _nested(depth: int, kind: str) -> str:
    """JSON text nested `depth` levels deep."""
    if kind == "list":
        return "[" * depth + '"x"' + "]" * depth
    return '{"a":' * depth + '"x"' + "}" * depth


def _bounded_schema(keyword: str, count: str) -> dict[str, Any]:
    if keyword == "pattern":
        return {"type": "object", "properties": {"a": {"type": "string", "pattern": count}}}
    kind = "string" if "Length" in keyword else "array"
    return {"type": "object", "properties": {"a": {"type": kind, keyword: HUGE}}}


def hostile_request(data: st.DataObject, path: str, body: Any) -> tuple[str, bytes, dict[str, str]]:
    """One hostile change to a schema-valid body: (kind, JSON text, extra headers)."""
    kind = data.draw(st.sampled_from(HOSTILE_KINDS), label="kind")
    headers: dict[str, str] = {}
    deep = ""
    body = body if isinstance(body, dict) else {}
    huge = data.draw(st.sampled_from(["1" + "0" * 5000, "1e400", "-99999999999999999999999"]))
    if kind == "surrogate":
        strings = [p for p, v in _leaves(body) if isinstance(v, str)] or [("model",)]
        where = data.draw(st.sampled_from(strings), label="where")
        lone = data.draw(st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud83d"]))
        body = _replaced(body, where, lone) if where != ("model",) else {**body, "model": lone}
    elif kind == "huge_number":
        numbers = [
            p for p, v in _leaves(body) if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        where = data.draw(st.sampled_from(numbers or [("max_tokens",)]), label="where")
        body = _replaced(body, where, HUGE) if numbers else {**body, "max_tokens": HUGE}
    elif kind == "deep":
        depth = data.draw(st.sampled_from([40, 200, 3000]), label="depth")
        deep = _nested(depth, data.draw(st.sampled_from(["list", "dict"])))
        leaves = [p for p, _ in _leaves(body) if p] or [("extra",)]
        where = data.draw(st.sampled_from(leaves), label="where")
        body = _replaced(body, where, DEEP) if where != ("extra",) else {**body, "x": DEEP}
    elif kind == "long_name":
        name = data.draw(st.sampled_from(["a" * 5000, "a:" * 120, "x/" * 2000 + "y", "a" * 199]))
        fields = [f for f in NAME_FIELDS if isinstance(body.get(f), str)] or ["model"]
        body = {**body, data.draw(st.sampled_from(fields)): name}
    elif kind == "schema_bounds":
        keyword = data.draw(st.sampled_from([*BOUNDED_SCHEMA_KEYWORDS, "pattern"]))
        schema = _bounded_schema(keyword, "^a{0," + "9" * 12 + "}$")
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        if path == "/v1/responses":
            fmt = {"type": "json_schema", "name": "x", "schema": schema}
            body = {**body, "text": {"format": fmt}}
        elif path.startswith("/v1/messages"):
            body = {**body, "tools": [{"name": "f", "input_schema": schema, "strict": True}]}
        elif path in ("/api/chat", "/api/generate"):
            body = {**body, "format": schema}
        else:
            strict_tool = {**tool, "function": {**tool["function"], "strict": True}}
            body = {**body, "tools": [data.draw(st.sampled_from([tool, strict_tool]))]}
    else:
        headers["Origin"] = data.draw(
            st.sampled_from(["https://evil.example", "null", "http://localhost.evil.example"])
        )
    # ensure_ascii: a lone half leaves as its \\u escape, as a hostile client writes it
    text = json.dumps(body).replace(f'"{HUGE}"', huge).replace(f'"{DEEP}"', deep)
    return kind, text.encode(), headers


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_error_shape(path: str, response: requests.Response) -> None:
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    elif path.startswith("/api/"):
        assert set(body) == {"error"} and isinstance(body["error"], str), body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@pytest.mark.parametrize(
    ("method", "path"), HOSTILE_OPERATIONS, ids=[f"{m} {p}" for m, p in HOSTILE_OPERATIONS]
)
def test_hostile_fuzz(
    api_schema: Any,
    fuzz_server: HearthServer,
    session: requests.Session,
    method: str,
    path: str,
) -> None:
    operation = api_schema[path][method]
    bodies = operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE)

    @given(case=bodies, data=st.data())
    @settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def fuzz(case: schemathesis.Case, data: st.DataObject) -> None:
        body = cap_generation(path, case.body)
        kind, content, headers = hostile_request(data, path, body)
        before = resident_bytes(fuzz_server.process.pid)
        response = session.request(
            method,
            f"{fuzz_server.base_url}{path}",
            data=content,
            headers={"content-type": "application/json", **headers},
            timeout=60,
        )
        grown = resident_bytes(fuzz_server.process.pid) - before
        assert grown <= (64 << 20) + 2 * len(content), f"{kind}: RSS grew {grown >> 20} MiB"
        assert response.status_code < 500 or response.status_code in (429, 503), (
            kind,
            response.status_code,
            response.text[:500],
        )
        if kind == "origin":
            assert response.status_code == 403, response.text
        if kind == "surrogate":
            assert response.status_code == 400, response.text
            if not path.startswith(("/api/", "/v1/messages")):
                assert response.json()["error"]["code"] == "invalid_value"
        if response.status_code >= 400:
            assert_error_shape(path, response)

    fuzz()
    assert "Traceback" not in fuzz_server.log()
