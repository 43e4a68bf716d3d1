"""Every curl example in Ollama's own docs/api.md, vendored at a named commit in
tests/fixtures/ollama/api.md, sent to the real server as curl sends it, with only the model name
changed (issue 23).

The parser reads each ```shell block's curl command (method, URL, headers, `-d` body, `-T`
upload); the test sends exactly the headers curl would, so `-d` without `-H` goes out as
`application/x-www-form-urlencoded`, as it does from a terminal, and still must be read as JSON.
Examples Hearth cannot serve are in EXPECTED_UNSERVED with the reason: each must get the 4xx
named there with Ollama's error shape, and one that starts to pass fails the test until it is
taken off the list, so the list can only shrink.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from hearth.models import registry
from tests.server.conftest import MODEL, HearthServer, start_server
from tests.server.media_helpers import write_test_projector

pytestmark = pytest.mark.server

DOCS = Path(__file__).parents[1] / "fixtures" / "ollama" / "api.md"

# Counted by hand in the vendored file: 42 ```shell blocks, of which 40 are curl commands; the
# other two are a stream of response lines (under "Create a model from a Safetensors
# directory") and the route signature `HEAD /api/blobs/:digest`.
SHELL_BLOCKS = 42
CURL_EXAMPLES = 40
# "Chat request (With history, with tools)" annotates its body with two `// ...` lines. They
# are the doc's comments, not part of the request: JSON has no comments, and Ollama's own
# decoder (Go's encoding/json) refuses them as Hearth's does. The parser drops them, and counts.
COMMENT_LINES = 2

# The doc's model names, each replaced by the bundled model that plays its part.
MODEL_FOR = {
    "llama3.2": MODEL,
    "llama3.1": MODEL,
    "llama3.1:8b": MODEL,
    "codellama:code": MODEL,  # a fill-in-the-middle model; neither bundled one is
    "mistral": MODEL,
    "llava": MODEL,
    "all-minilm": MODEL,  # the embedder: Hearth embeds with the chat model
    "llama3.2:3b-instruct-fp16": MODEL,  # quantize's source: Hearth re-quantizes a quantized one
}
# Names an example creates, or names that the test makes exist first (PRECONDITIONS): kept as
# written, since the example is about that name.
NAMES_KEPT = {
    "mario",
    "llama3.2:quantized",
    "my-gguf-model",
    "fred",
    "llama3-backup",
    "llama3:13b",
    "mattw/pygmalion:latest",
}
NAME_FIELDS = ("model", "from", "source", "destination")

# The blob examples upload "model.gguf" and create "test.gguf" under a digest of Ollama's: the
# digest names the model file, so it becomes the bundled GGUF's, which the test uploads.
DOC_GGUF_DIGESTS = {
    "sha256:29fdb92e57cf0827ded04ae6461b5931d01fa595843f55d36f5b275a52087dd2",
    "sha256:432f310a77f4650a88d0fd59ecdd7cebed8d684bafea53cbff0473542964f0c3",
}

# Generation is capped where the example sets no num_predict, to keep the file near 20 s on two
# shared cores: uncapped, "Why is the sky blue?" runs to hundreds of tokens, and with tools
# offered each token costs 0.1-1 s there (measured: the tool-call grammar, on a busy machine),
# so one example could take minutes. The reply's shape is the same after 8 tokens. A small JSON
# object needs about 15 to close, so `format` gets 32; a reply cut short is checked for its
# shape only (its JSON only when done_reason is "stop"). Tool calls stay at 8: SmolLM2 mostly
# answers these prompts in prose anyway, and test_ollama_api.py checks a finished call's shape.
NUM_PREDICT = 8
NUM_PREDICT_FORMAT = 32


@dataclass(frozen=True)
class Unserved:
    status: int  # what Hearth answers, with Ollama's {"error": ...}
    says: str  # in the error message: the refusal is the one named in `reason`
    reason: str


# Examples Hearth cannot serve yet, by id. Take one off when it passes: the test fails until then.
EXPECTED_UNSERVED = {
    "generate: request (with suffix)": Unserved(
        400,
        "fill-in-the-middle",
        "suffix: neither bundled model has fill-in-the-middle tokens in its GGUF (a FIM model "
        "such as codellama:code or qwen2.5-coder, once pulled, is served)",
    ),
    "generate: generate request (with options)": Unserved(
        400,
        "'options.numa' is set when the server starts",
        "options Hearth refuses by name rather than ignore, the first one named: the load-time "
        "numa, num_batch, num_gpu, main_gpu, use_mmap, num_thread and draft_num_predict (server "
        "flags), num_keep and penalize_newline (llama.cpp's samplers have none), repeat_last_n "
        "other than 64 (Hearth's penalty window)",
    ),
    "create: create a model from a safetensors directory": Unserved(
        400,
        "does not convert safetensors",
        "Hearth creates a model from one GGUF; it does not convert a safetensors directory",
    ),
    "push: push a model": Unserved(
        404,
        "Unknown route",
        "/api/push: Hearth keeps no registry to push to; models come in with /api/pull",
    ),
}


@dataclass(frozen=True)
class Example:
    id: str
    line: int  # of the ```shell fence, in the vendored file
    method: str
    path: str
    headers: dict[str, str]
    data: str | None  # the -d argument as written
    upload: str | None  # the -T file


@dataclass(frozen=True)
class Parsed:
    examples: list[Example]
    shell_blocks: int
    comment_lines: int


# Headings that name no example: an example under one is named by its section's heading.
_GENERIC = {"examples", "request", "response", "parameters", "query parameters"}


def _heading_slug(text: str) -> str:
    return text.lstrip("#").strip().lower()


def _curl(tokens: list[str], example_id: str, line: int) -> Example:
    """The request curl makes of these arguments, with the headers it sends of its own."""
    assert tokens[0] == "curl"
    method: str | None = None
    url: str | None = None
    headers = {"User-Agent": "curl/8.5.0", "Accept": "*/*"}
    data: str | None = None
    upload: str | None = None
    head = False
    args = iter(tokens[1:])
    for token in args:
        if token in ("-d", "--data"):
            data = next(args)
        elif token in ("-X", "--request"):
            method = next(args)
        elif token in ("-H", "--header"):
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif token in ("-T", "--upload-file"):
            upload = next(args)
        elif token in ("-I", "--head"):
            head = True
        elif token.startswith("http"):
            url = token
        else:
            raise AssertionError(f"line {line}: curl option {token!r} is not parsed")
    assert url is not None, f"line {line}: no URL"
    if data is not None and not any(h.lower() == "content-type" for h in headers):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # curl's own, for -d
    default = "HEAD" if head else "PUT" if upload else "POST" if data is not None else "GET"
    path = urlsplit(url).path
    return Example(example_id, line, method or default, path, headers, data, upload)


def parse(markdown: str) -> Parsed:
    examples: list[Example] = []
    blocks = comments = 0
    section = heading = ""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, heading = _heading_slug(line), ""
        elif line.startswith(("### ", "#### ")) and _heading_slug(line) not in _GENERIC:
            heading = _heading_slug(line)
        if line.strip() != "```shell":
            i += 1
            continue
        blocks += 1
        fence = i + 1
        end = lines.index("```", fence)
        body = [text for text in lines[fence:end] if not text.lstrip().startswith("//")]
        comments += end - fence - len(body)
        i = end + 1
        command = "\n".join(body).replace("\\\n", " ")
        if not command.startswith("curl "):
            continue
        tokens = shlex.split(command)
        route = urlsplit(next(t for t in tokens if t.startswith("http"))).path
        name = route.removeprefix("/api/").split("/")[0]
        examples.append(_curl(tokens, f"{name}: {heading or section}", fence))
    return Parsed(examples, blocks, comments)


PARSED = parse(DOCS.read_text())
EXAMPLES = {example.id: example for example in PARSED.examples}


def test_the_parser_finds_every_example() -> None:
    assert DOCS.read_text().startswith("<!-- Vendored from https://github.com/ollama/ollama")
    assert PARSED.shell_blocks == SHELL_BLOCKS
    assert len(PARSED.examples) == CURL_EXAMPLES
    assert len(EXAMPLES) == CURL_EXAMPLES, "two examples share an id"
    assert PARSED.comment_lines == COMMENT_LINES
    assert set(EXPECTED_UNSERVED) <= set(EXAMPLES), "an unserved id names no example"
    names = {
        body[field]
        for example in PARSED.examples
        if example.data is not None
        for body in [json.loads(example.data)]
        for field in NAME_FIELDS
        if field in body
    }
    assert names == set(MODEL_FOR) | NAMES_KEPT


def test_the_parser_reads_curl_as_curl_does() -> None:
    examples = {(e.method, e.path, e.headers.get("Content-Type")) for e in PARSED.examples}
    form = "application/x-www-form-urlencoded"
    assert ("POST", "/api/generate", form) in examples  # -d alone
    assert ("POST", "/api/chat", "application/json") in examples  # -X POST -H ... -d
    assert ("DELETE", "/api/delete", form) in examples  # -X DELETE -d
    assert ("GET", "/api/tags", None) in examples
    blob = "/api/blobs/sha256:29fdb92e57cf0827ded04ae6461b5931d01fa595843f55d36f5b275a52087dd2"
    assert ("HEAD", blob, None) in examples  # -I
    assert ("POST", blob, None) in examples  # -T model.gguf -X POST


# -- sending them ------------------------------------------------------------------------------


@dataclass
class Docs:
    server: HearthServer
    http: httpx.Client
    gguf: Path
    digest: str

    def ensure_blob(self) -> None:
        if self.http.head(f"/api/blobs/{self.digest}").status_code != 200:
            with self.gguf.open("rb") as file:
                sent = self.http.post(f"/api/blobs/{self.digest}", content=file)
            assert sent.status_code == 201, sent.text

    def names(self) -> set[str]:
        return {model["name"] for model in self.http.get("/api/tags").json()["models"]}

    def ensure_model(self, name: str) -> None:
        if name not in self.names():
            copied = self.http.post("/api/copy", json={"source": MODEL, "destination": name})
            assert copied.status_code == 200, copied.text

    def ensure_no_model(self, name: str) -> None:
        if name in self.names():
            assert self.http.request("DELETE", "/api/delete", json={"model": name}).is_success


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docs]:
    # A server of its own: the examples create, copy, delete and unload models.
    gguf = registry.embedded_model_path()
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    home = tmp_path_factory.mktemp("ollama-docs")
    # The startup model plays llava: a random projector gives it eyes (tests/server/test_media.py).
    projector = write_test_projector(home / "mmproj-test.gguf")
    with (
        start_server(home, "--mmproj", str(projector)) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as http,
    ):
        yield Docs(server, http, gguf, digest)


# What the doc assumes of the server before an example (a model it deletes exists, a blob it
# names was pushed), made so here, so that each example runs alone and in any order.
PRECONDITIONS = {
    "blobs: check if a blob exists": lambda docs: docs.ensure_blob(),
    "create: create a model from gguf": lambda docs: docs.ensure_blob(),
    "delete: delete a model": lambda docs: docs.ensure_model("llama3:13b"),
    "copy: copy a model": lambda docs: docs.ensure_no_model("llama3-backup"),
}


def _body(example: Example, digest: str) -> dict[str, Any] | None:
    if example.data is None:
        return None
    body: dict[str, Any] = json.loads(example.data)
    for field in NAME_FIELDS:
        if field in body:
            body[field] = MODEL_FOR.get(body[field], body[field])
    if isinstance(files := body.get("files"), dict):
        body["files"] = {n: digest if d in DOC_GGUF_DIGESTS else d for n, d in files.items()}
    if example.path in ("/api/chat", "/api/generate") and (
        body.get("messages") or body.get("prompt")
    ):
        options = body.setdefault("options", {})
        options.setdefault("num_predict", NUM_PREDICT_FORMAT if body.get("format") else NUM_PREDICT)
    return body


def send(docs: Docs, example: Example) -> httpx.Response:
    path = example.path
    for doc_digest in DOC_GGUF_DIGESTS:
        path = path.replace(doc_digest, docs.digest)
    body = _body(example, docs.digest)
    content: bytes | None = None
    if body is not None:
        content = json.dumps(body, indent=2).encode()
    elif example.upload is not None:
        assert example.upload == "model.gguf"
        content = docs.gguf.read_bytes()
    # httpx adds Host and Content-Length, as curl does; the rest is curl's (Example.headers).
    return docs.http.request(example.method, path, headers=example.headers, content=content)


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines, "an empty stream"
    assert not any("error" in line for line in lines), lines
    return lines


def _streams(body: dict[str, Any] | None) -> bool:
    return body is None or body.get("stream", True) is not False


def _generation(
    example: Example, body: dict[str, Any], response: httpx.Response
) -> list[dict[str, Any]]:
    """The doc's shapes: a stream of objects, all `done: false` but the last; or one object."""
    if _streams(body) and (body.get("messages") or body.get("prompt")):
        parts = _lines(response)
    else:
        parts = [response.json()]
    assert [part["done"] for part in parts] == [False] * (len(parts) - 1) + [True]
    for part in parts:
        assert part["model"] == body["model"]
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", part["created_at"])
        if example.path == "/api/chat":
            assert part["message"]["role"] == "assistant"
        else:
            assert isinstance(part["response"], str)
    final = parts[-1]
    if body.get("messages") or body.get("prompt"):
        assert final["done_reason"] in ("stop", "length")
        for counter in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
            assert isinstance(final[counter], int), counter
        assert 0 < final["eval_count"] <= body["options"]["num_predict"]
    return parts


def _check_generation(
    example: Example, docs: Docs, body: dict[str, Any], response: httpx.Response
) -> None:
    parts = _generation(example, body, response)
    final = parts[-1]
    if not (body.get("messages") or body.get("prompt")):  # load or unload
        unloads = body.get("keep_alive") == 0
        assert final["done_reason"] == ("unload" if unloads else "load")
        running = {model["name"] for model in docs.http.get("/api/ps").json()["models"]}
        assert (body["model"] in running) is not unloads
        return
    if example.path == "/api/chat":
        text = "".join(part["message"].get("content", "") for part in parts)
        calls = [call for part in parts for call in part["message"].get("tool_calls", [])]
    else:
        text, calls = "".join(part["response"] for part in parts), []
    names = {tool["function"]["name"] for tool in body.get("tools", [])}
    for call in calls:
        assert call["function"]["name"] in names
        assert isinstance(call["function"]["arguments"], dict)
    assert text or calls or final["done_reason"] == "stop"  # a model may end its turn at once
    if body.get("format") and final["done_reason"] == "stop":  # a cut reply is no JSON yet
        value = json.loads(text)
        if isinstance(body["format"], dict):
            jsonschema.validate(value, body["format"])
        else:
            assert isinstance(value, dict)


def _check_management(
    example: Example, docs: Docs, body: dict[str, Any] | None, response: httpx.Response
) -> None:
    path = example.path
    if path in ("/api/create", "/api/pull"):
        statuses = [line["status"] for line in _lines(response)]
        assert statuses[-1] == "success", statuses
        assert body is not None
        if path == "/api/create":
            assert body["model"] in docs.names() or f"{body['model']}:latest" in docs.names()
    elif path in ("/api/copy", "/api/delete") or example.method == "HEAD":
        assert response.content == b""
        if path == "/api/copy":
            assert body is not None and body["destination"] in docs.names()
        if path == "/api/delete":
            assert body is not None and body["model"] not in docs.names()
    elif path.startswith("/api/blobs/"):
        assert response.status_code == 201
    elif path == "/api/tags":
        models = response.json()["models"]
        assert MODEL in {model["name"] for model in models}
        for model in models:
            assert {"name", "model", "modified_at", "size", "digest", "details"} <= set(model)
    elif path == "/api/show":
        shown = response.json()
        assert {"modelfile", "parameters", "template", "details", "model_info"} <= set(shown)
        assert "completion" in shown["capabilities"]
    elif path == "/api/ps":
        assert all(
            {"name", "model", "size", "expires_at"} <= set(m) for m in response.json()["models"]
        )
    elif path == "/api/embed":
        reply = response.json()
        assert body is not None
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        assert len(reply["embeddings"]) == len(inputs)
        assert all(len(vector) == 576 for vector in reply["embeddings"])
        assert reply["model"] == MODEL and reply["prompt_eval_count"] > 0
    elif path == "/api/embeddings":
        assert len(response.json()["embedding"]) == 576
    elif path == "/api/version":
        assert re.fullmatch(r"\d+\.\d+\.\d+", response.json()["version"])
    else:
        raise AssertionError(f"no check for {path}")


def _served(docs: Docs, example: Example) -> httpx.Response:
    """Send the example; assert the documented status and shape."""
    if (precondition := PRECONDITIONS.get(example.id)) is not None:
        precondition(docs)
    response = send(docs, example)
    body = _body(example, docs.digest)
    documented = 201 if example.path.startswith("/api/blobs/") and example.method == "POST" else 200
    assert response.status_code == documented, response.text
    if example.path in ("/api/chat", "/api/generate"):
        assert body is not None
        _check_generation(example, docs, body, response)
    else:
        _check_management(example, docs, body, response)
    return response


@pytest.mark.parametrize("example_id", [i for i in EXAMPLES if i not in EXPECTED_UNSERVED])
def test_example_is_served_as_documented(docs: Docs, example_id: str) -> None:
    _served(docs, EXAMPLES[example_id])


@pytest.mark.parametrize("example_id", sorted(EXPECTED_UNSERVED))
def test_unserved_example_gets_a_clear_refusal(docs: Docs, example_id: str) -> None:
    """A 4xx with Ollama's `{"error": "..."}` and the status listed, never a 500; an example
    that starts to pass must come off EXPECTED_UNSERVED, so the list only shrinks."""
    unserved = EXPECTED_UNSERVED[example_id]
    example = EXAMPLES[example_id]
    if (precondition := PRECONDITIONS.get(example.id)) is not None:
        precondition(docs)
    response = send(docs, example)
    assert 400 <= unserved.status < 500
    assert not response.is_success, f"{example_id} is served now: take it off EXPECTED_UNSERVED"
    assert response.status_code == unserved.status, response.text
    error = response.json()
    assert list(error) == ["error"] and unserved.says in error["error"]
