"""The neighbour's view of hostile input (issue 22): while each hostile request runs, how long
do `/health` and a one-token chat (its time to first token) take for another client?

    .venv/bin/python bench/hostile.py           # each class a few times
    .venv/bin/python bench/hostile.py --repeat 1

It starts `hearth serve` itself (its defaults), then for each class sends the hostile request
and, until it is answered, measures the neighbour over and over: a GET /health and a streamed
chat with max_tokens 1. The target is 0.5 s for both (the issue's); the hostile request's own
time is reported beside them. Writes bench/results/hostile-latest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2:135m"
RESULTS = Path(__file__).parent / "results"
TARGET_S = 0.5
BIG_INPUT = "hello world " * 1_250_000  # 15 MiB: seconds of templating and tokenizing


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": "x", "schema": schema}}


def _hostile_requests() -> dict[str, Callable[[], tuple[str, str, Any, dict[str, str]]]]:
    """Each class: (method, path, JSON body or raw bytes, headers)."""
    blob = os.urandom(8 << 20)
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    return {
        "lone surrogate (15 MiB input)": lambda: (
            "POST",
            "/v1/responses",
            json.dumps({"model": MODEL, "input": BIG_INPUT + "\ud800"}).encode(),
            {},
        ),
        "schema minLength 1e8": lambda: (
            "POST",
            "/v1/responses",
            {
                "model": MODEL,
                "input": "hi",
                "text": _schema_format({"type": "string", "minLength": 100_000_000}),
            },
            {},
        ),
        "schema: 50 x minLength 1000 (within the limits)": lambda: (
            "POST",
            "/v1/responses",
            {
                "model": MODEL,
                "input": "hi",
                "max_output_tokens": 1,
                "text": _schema_format(
                    {
                        "type": "object",
                        "properties": {
                            f"p{i}": {"type": "string", "minLength": 1000} for i in range(50)
                        },
                    }
                ),
            },
            {},
        ),
        "15 MiB input": lambda: (
            "POST",
            "/v1/responses",
            {"model": MODEL, "input": BIG_INPUT},
            {},
        ),
        "foreign Origin, 8 MiB blob": lambda: (
            "POST",
            f"/api/blobs/{digest}",
            blob,
            {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        ),
        "long names": lambda: ("POST", "/api/pull", {"model": "a" * 5000}, {}),
    }


async def _neighbour(base_url: str, until: asyncio.Event) -> tuple[list[float], list[float]]:
    """/health latencies and one-token chat TTFTs, one after the other until `until` is set
    (at least one of each)."""
    health: list[float] = []
    ttft: list[float] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        while not health or not until.is_set():
            start = time.perf_counter()
            await client.get("/health")
            health.append(time.perf_counter() - start)
            start = time.perf_counter()
            async with client.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as response:
                first = None
                async for line in response.aiter_lines():  # read to the end: max_tokens is 1
                    if first is None and line.startswith("data: ") and '"content"' in line:
                        first = time.perf_counter() - start
                if first is not None:
                    ttft.append(first)
    return health, ttft


async def _measure(base_url: str, name: str, request: tuple[str, str, Any, dict[str, str]]) -> Any:
    method, path, body, headers = request
    done = asyncio.Event()

    async def hostile() -> tuple[int, float]:
        start = time.perf_counter()
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
            if isinstance(body, bytes):
                headers.setdefault("Content-Type", "application/json")
                response = await client.request(method, path, content=body, headers=headers)
            else:
                response = await client.request(method, path, json=body, headers=headers)
        done.set()
        return response.status_code, time.perf_counter() - start

    (status, took), (health, ttft) = await asyncio.gather(hostile(), _neighbour(base_url, done))
    return {
        "class": name,
        "status": status,
        "hostile_s": round(took, 3),
        "health_max_s": round(max(health), 3),
        "health_median_s": round(statistics.median(health), 3),
        "ttft_max_s": round(max(ttft), 3) if ttft else None,
        "ttft_median_s": round(statistics.median(ttft), 3) if ttft else None,
        "samples": len(health),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(repeat: int, out: Path | None, extra_args: list[str]) -> dict[str, Any]:
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="hearth-hostile-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env["HEARTH_HOME"] = str(home)
    cmd = [sys.executable, "-m", "hearth", "serve", "--port", str(port), *extra_args]
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hearth serve did not start: {home / 'server.log'}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        warm_up = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        for _ in range(3):  # the first requests pay one-time costs, not the hostile one's
            httpx.post(f"{base_url}/v1/chat/completions", json=warm_up, timeout=60)
        for name, make in _hostile_requests().items():
            for _ in range(repeat):
                rows.append(asyncio.run(_measure(base_url, name, make())))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    traceback = "Traceback" in (home / "server.log").read_text(errors="replace")
    report = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "server_args": extra_args,
        "target_s": TARGET_S,
        "rows": rows,
        "no_5xx": all(row["status"] < 500 for row in rows),
        "no_traceback": not traceback,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "hostile-latest.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "hostile-latest.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# The neighbour's view of hostile input ({report['started']}, {report['cpus']} CPUs, "
        f"serve {' '.join(report['server_args']) or 'defaults'})",
        "",
        f"Target: /health and a one-token chat's TTFT at most {report['target_s']} s while each "
        "hostile request runs.",
        "",
        "| hostile class | status | its time (s) | /health max (median) | chat TTFT max (median) |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['class']} | {row['status']} | {row['hostile_s']} | "
            f"{row['health_max_s']} ({row['health_median_s']}) | "
            f"{row['ttft_max_s']} ({row['ttft_median_s']}) |"
        )
    lines += ["", f"No 5xx: {report['no_5xx']}; no traceback: {report['no_traceback']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each class")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the reports go")
    parser.add_argument("serve_args", nargs="*", help="extra `hearth serve` flags (after --)")
    args = parser.parse_args()
    report = run(args.repeat, args.out, args.serve_args)
    print(markdown(report))
    sys.exit(0 if report["no_5xx"] and report["no_traceback"] else 1)


if __name__ == "__main__":
    main()
