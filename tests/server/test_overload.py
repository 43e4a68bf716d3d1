"""Overload: a bounded queue answers 429 past its bound and 503 after its timeout; nothing hangs,
nothing gets a 500, and the requests that were admitted finish."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, start_server

pytestmark = pytest.mark.server


def test_two_hundred_requests_at_once_get_answers_or_429(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "4", "--max-queue", "8") as server:

        async def one(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Say a word about {i}."}],
                "max_tokens": 8,
                "stream": i % 2 == 0,  # streams and plain requests alike
            }
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["type"] == "server_overloaded"
                return 429, ""
            assert response.status_code == 200, response.text
            if body["stream"]:
                assert response.text.rstrip().endswith("data: [DONE]")
                assert '"finish_reason":"' in response.text
                return 200, "stream"
            return 200, response.json()["choices"][0]["finish_reason"]

        async def fire() -> list[tuple[int, str]]:
            limits = httpx.Limits(max_connections=250)
            async with httpx.AsyncClient(
                base_url=server.base_url, limits=limits, timeout=120
            ) as client:
                return await asyncio.gather(*(one(client, i) for i in range(200)))

        results = asyncio.run(fire())
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 429}
        assert statuses[200] >= 12  # at least every slot and queue place was used
        assert statuses[429] > 0
        assert all(finish in ("stream", "stop", "length") for s, finish in results if s == 200)
        health = server.health()
        assert health["slots_in_use"] == 0 and health["queue_length"] == 0
        assert health["engine"]["requests_finished"] == statuses[200]


def test_a_request_that_waits_too_long_gets_503(tmp_path: Path) -> None:
    with start_server(tmp_path, "--parallel", "1", "--queue-timeout", "1") as server:
        hog = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "A long story, please."}],
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": True,
        }

        async def scenario() -> list[httpx.Response]:
            async with (
                httpx.AsyncClient(base_url=server.base_url, timeout=60) as client,
                client.stream("POST", "/v1/chat/completions", json=hog) as running,
            ):
                assert running.status_code == 200
                waiting_stream = client.post("/v1/chat/completions", json={**hog, "max_tokens": 4})
                waiting_plain = client.post(
                    "/v1/chat/completions", json={**hog, "max_tokens": 4, "stream": False}
                )
                return await asyncio.gather(waiting_stream, waiting_plain)

        for response in asyncio.run(scenario()):
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["type"] == "server_overloaded"
        assert server.health()["queue_length"] == 0
