"""A full disk (issue 22), as a file size limit: RLIMIT_FSIZE in the server's process, with
SIGXFSZ ignored, makes every write past the limit fail with EFBIG as a full disk fails with
ENOSPC, and needs no mount. The server's output goes through a pipe (start_server), which the
limit does not cover.

Never a 500 and never a lost answer: a response whose store write fails is answered with
`store: false`; a blob or a copy (nothing generated) gets 507 naming the disk."""

from __future__ import annotations

import hashlib
import json
import resource
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

# Below what the response store needs for its tables and one stored answer of INPUT.
FILE_SIZE_LIMIT = 32 * 1024
INPUT = "hello world " * 1000  # 12 KB, about 2000 tokens: within the context


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    running = start_server(
        tmp_path_factory.mktemp("disk-full"),
        "--prompt-cache-disk",
        "0",  # its files at shutdown would only fail too
        preexec_fn=limit_file_size,
    )
    try:
        yield running
    finally:
        running.stop()
        log = running.log()
        assert "Traceback" not in log, log


def test_an_answer_that_cannot_be_stored_is_answered_with_store_false(
    full: HearthServer,
) -> None:
    response = httpx.post(
        f"{full.base_url}/v1/responses",
        json={"model": MODEL, "input": INPUT, "max_output_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["store"] is False
    assert body["output"][0]["content"][0]["text"]
    assert "was answered but not stored" in full.log()
    # Not stored: unknown (404), or, where SQLite cannot even read on the full disk, 507.
    assert httpx.get(f"{full.base_url}/v1/responses/{body['id']}").status_code in (404, 507)


def test_a_streamed_answer_that_cannot_be_stored_ends_with_store_false(
    full: HearthServer,
) -> None:
    with httpx.stream(
        "POST",
        f"{full.base_url}/v1/responses",
        json={"model": MODEL, "input": INPUT, "max_output_tokens": 4, "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[len("data: ") :])
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]
    assert events[0]["response"]["store"] is True  # announced before the write was tried
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert events[-1]["response"]["store"] is False


def test_a_blob_past_the_disk_is_a_507_naming_it(full: HearthServer) -> None:
    blob = b"\0" * (4 * FILE_SIZE_LIMIT)
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    response = httpx.post(f"{full.base_url}/api/blobs/{digest}", content=blob, timeout=60)
    assert response.status_code == 507, response.text
    assert "disk" in response.json()["error"]
    assert httpx.head(f"{full.base_url}/api/blobs/{digest}").status_code == 404


def test_a_quantizing_create_past_the_disk_is_a_507(full: HearthServer) -> None:
    response = httpx.post(
        f"{full.base_url}/api/create",
        json={"model": "quantized-onto-a-full-disk", "from": MODEL, "quantize": "q8_0"},
        timeout=300,
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert "disk" in lines[-1]["error"], lines[-1]


def test_the_server_goes_on_answering(full: HearthServer) -> None:
    response = httpx.post(
        f"{full.base_url}/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 2, "store": False},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["store"] is False
