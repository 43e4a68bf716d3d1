"""--journal DIR through the real server: a line per request with its model, tokens and
timings, never a key, and `hearth journal` showing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, start_server

pytestmark = pytest.mark.server

KEY = "journal-test-key"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_requests_are_journaled_without_keys(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    args = ("--journal", str(journal), "--api-key", KEY)
    with start_server(tmp_path, *args, api_key=KEY) as server:
        client = server.client()
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=6,
                stream=True,
            )
        )
        called = client.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=64,
        )
        assert [item.type for item in called.output] == ["function_call"]
        bad = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": MODEL},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        assert bad.status_code == 400
        shown = subprocess.run(
            [sys.executable, "-m", "hearth", "journal", "--dir", str(journal)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "COLUMNS": "200"},  # rich wraps a pipe at 80 columns
        )
    text = (journal / "requests.jsonl").read_text()
    assert KEY not in text
    entries = [json.loads(line) for line in text.splitlines()]
    chats = [e for e in entries if e["route"] == "/v1/chat/completions"]
    assert [e["status"] for e in chats] == [200, 200, 400]
    plain, streamed, refused = chats
    assert plain["model"] == MODEL and plain["completion_tokens"] == 5
    assert plain["prompt_tokens"] > 0 and plain["finish_reason"] == "length"
    assert streamed["completion_tokens"] == 6 and streamed["ttft_ms"] <= streamed["duration_ms"]
    assert "model" not in refused and "request_body" not in refused
    assert "/v1/chat/completions" in shown.stdout and MODEL in shown.stdout
    (response,) = [e for e in entries if e["route"] == "/v1/responses"]
    assert response["finish_reason"] == "tool_calls"  # ended by the call, not by the engine


def test_the_journal_rotates_by_size_and_hearth_journal_reads_across_files(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    with start_server(tmp_path, "--journal", str(journal), "--journal-max-bytes", "1500") as server:
        client = server.client()
        for index in range(8):
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {index}"}],
                max_tokens=2,
            )
    # Shut down: the lifespan closed the journal, with every line written out.
    rotated = sorted(path.name for path in journal.iterdir())
    assert "requests.jsonl" in rotated and "requests.jsonl.1" in rotated
    assert all(path.stat().st_size <= 1500 for path in journal.iterdir())
    shown = subprocess.run(
        [sys.executable, "-m", "hearth", "journal", "--dir", str(journal), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]
    chats = [e for e in entries if e["route"] == "/v1/chat/completions"]
    assert len(chats) == 8
    assert all(e["status"] == 200 and e["completion_tokens"] == 2 for e in chats)
