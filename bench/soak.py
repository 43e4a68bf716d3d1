"""A soak test: hours of a person's mixed use, squeezed into a bounded run against a real server.

    .venv/bin/python bench/soak.py                  # make soak: 15 minutes
    .venv/bin/python bench/soak.py --seconds 60     # the short run in make test

It starts `hearth serve` itself (4 slots, a queue of 8, a second model as a preset alias of the
same file) and runs, until the time is up, workers that each repeat one kind of request:
streamed and plain chat, clients that leave mid-stream, invalid bodies, embeddings, the second
model loaded and unloaded, and bursts of 24 requests at once (past --max-queue). Then it checks
what a server that runs for weeks must hold:
- no 5xx but 503 (a queue timeout), and every request answered or refused with 429/503;
- no slot in use and nothing queued at the end (/health);
- resident memory growing less than 5% from just after the warm-up (the first fifth of the run)
  to the end: the peaks of the second and the last fifth, each holding several loads of the
  second model.
Writes bench/results/soak-latest.json and .md; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

MODEL = "smollm2:135m"
ALIAS = "soak-alt"  # the second model: a preset over the same file, loaded and unloaded
RESULTS = Path(__file__).parent / "results"
RSS_GROWTH_LIMIT = 0.05
HI = [{"role": "user", "content": "Say hello in five words."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident memory of the server and its children: each loaded model's runner process holds
    its weights and KV cache, so a leak there counts too."""
    total, found = 0, False
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:  # a process that ended meanwhile
            continue
        if int(status.parent.name) == pid or fields.get("PPid", "").strip() == str(pid):
            found |= int(status.parent.name) == pid
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    if not found:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return total


@dataclass
class Tally:
    """Every request's outcome, by kind."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, kind: str, status: int) -> None:
        self.statuses.setdefault(kind, Counter())[status] += 1

    def fail(self, kind: str, why: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(f"{kind}: {why}")

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def count(self, predicate: Callable[[int], bool]) -> int:
        return sum(n for c in self.statuses.values() for s, n in c.items() if predicate(s))


class Soak:
    def __init__(self, base_url: str, deadline: float, tally: Tally) -> None:
        self.base_url, self.deadline, self.tally = base_url, deadline, tally

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def loop(self, kind: str, once: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=120) as client:
            while self.running():
                try:
                    await once(client)
                except httpx.HTTPError as exc:
                    self.tally.add(kind, 0)
                    self.tally.fail(kind, f"{type(exc).__name__}: {exc}")

    def expect(self, kind: str, status: int, allowed: tuple[int, ...] = (200, 429, 503)) -> None:
        self.tally.add(kind, status)
        if status not in allowed:
            self.tally.fail(kind, f"status {status}")

    async def chat(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": HI, "max_tokens": 16}
        reply = await client.post("/v1/chat/completions", json=body)
        self.expect("chat", reply.status_code)

    async def stream(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": HI, "max_tokens": 16, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            lines = [line async for line in reply.aiter_lines() if line.startswith("data: ")]
        self.expect("stream", reply.status_code)
        if reply.status_code == 200 and (not lines or lines[-1] != "data: [DONE]"):
            self.tally.fail("stream", f"ended without [DONE]: {lines[-1:]}")

    async def leave(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": HI, "max_tokens": 64, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            seen = 0
            async for _ in reply.aiter_lines():
                seen += 1
                if seen >= 3:
                    break  # the client leaves mid-stream; the server must free the slot
        self.expect("disconnect", reply.status_code)

    async def invalid(self, client: httpx.AsyncClient) -> None:
        bodies: list[Any] = [
            {"model": MODEL, "messages": "not a list"},
            {"model": MODEL, "messages": HI, "temperature": "hot"},
            {"model": MODEL},
        ]
        for body in bodies:
            reply = await client.post("/v1/chat/completions", json=body)
            self.expect("invalid", reply.status_code, (400,))
        reply = await client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        self.expect("invalid", reply.status_code, (400,))
        await asyncio.sleep(0.1)  # refusals are quick: keep them from crowding out the rest

    async def embed(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "input": ["a soak test", "of embeddings"]}
        reply = await client.post("/v1/embeddings", json=body)
        self.expect("embeddings", reply.status_code)

    async def second_model(self, client: httpx.AsyncClient) -> None:
        load = await client.post("/admin/models/load", json={"model": ALIAS})
        self.expect("second model", load.status_code, (200, 409, 503))
        body = {"model": ALIAS, "messages": HI, "max_tokens": 8}
        reply = await client.post("/v1/chat/completions", json=body)
        self.expect("second model", reply.status_code)
        unload = await client.post("/admin/models/unload", json={"model": ALIAS})
        self.expect("second model", unload.status_code, (200, 409))
        await asyncio.sleep(1)

    async def burst(self, client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "messages": HI, "max_tokens": 4}
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(24)),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                self.tally.add("burst", 0)
                self.tally.fail("burst", repr(reply))
            else:
                self.expect("burst", reply.status_code)
        await asyncio.sleep(5)


Samples = list[tuple[float, int]]  # (seconds into the run, resident bytes)


async def run_load(base_url: str, seconds: float, pid: int) -> tuple[Tally, Samples]:
    tally = Tally()
    start = time.monotonic()
    soak = Soak(base_url, start + seconds, tally)
    samples: Samples = []

    async def sample_rss() -> None:
        while soak.running():
            samples.append((time.monotonic() - start, rss_bytes(pid)))
            await asyncio.sleep(1)

    workers = [
        soak.loop("chat", soak.chat),
        soak.loop("stream", soak.stream),
        soak.loop("stream", soak.stream),
        soak.loop("disconnect", soak.leave),
        soak.loop("invalid", soak.invalid),
        soak.loop("embeddings", soak.embed),
        soak.loop("second model", soak.second_model),
        soak.loop("burst", soak.burst),
    ]
    await asyncio.gather(sample_rss(), *workers)
    return tally, samples


def check(tally: Tally, samples: Samples, health: dict[str, Any], seconds: float) -> dict[str, Any]:
    # The second model loads and unloads every few seconds, so memory swings by its size: the
    # peak of a window just after the warm-up is compared with the peak of the last window.
    warm = [rss for t, rss in samples if seconds / 5 <= t < 2 * seconds / 5]
    late = [rss for t, rss in samples if t >= 4 * seconds / 5]
    after_warmup = max(warm) if warm else 0
    peak = max(late) if late else 0
    growth = (peak - after_warmup) / after_warmup if after_warmup else 0.0
    server_errors = tally.count(lambda s: s >= 500 and s != 503)
    busy = [m for m in health.get("models", []) if m.get("slots_in_use") or m.get("queue_length")]
    checks = {
        "no 5xx but 503": server_errors == 0,
        "every request answered or refused (429/503)": not tally.failures,
        "no slot in use or request queued at the end": not busy
        and not health.get("slots_in_use")
        and not health.get("queue_length"),
        f"RSS growth after warm-up under {RSS_GROWTH_LIMIT:.0%}": growth < RSS_GROWTH_LIMIT,
    }
    return {
        "checks": checks,
        "passed": all(checks.values()),
        "requests": tally.total,
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(tally.statuses.items())},
        "failures": tally.failures,
        "rss_after_warmup_mib": round(after_warmup / 2**20, 1),
        "rss_at_end_mib": round(peak / 2**20, 1),
        "rss_growth": round(growth, 4),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Soak: {report['seconds']:.0f} s, {report['requests']} requests",
        "",
        f"Run at {report['started']} on {report['cpus']} CPUs.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in report["checks"].items()),
        "",
        "| kind | statuses |",
        "|---|---|",
        *(
            f"| {kind} | {', '.join(f'{s}: {n}' for s, n in statuses.items())} |"
            for kind, statuses in report["by_kind"].items()
        ),
        "",
        f"RSS peak in the window after warm-up {report['rss_after_warmup_mib']} MiB, in the last"
        f" window {report['rss_at_end_mib']} MiB: growth {report['rss_growth']:.2%}.",
    ]
    if report["failures"]:
        lines += ["", "Failures (first 50):", *(f"- {f}" for f in report["failures"])]
    return "\n".join(lines) + "\n"


def soak(seconds: float, out: Path | None) -> dict[str, Any]:
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="hearth-soak-"))
    config = home / "hearth.toml"
    config.write_text(f'[models."{ALIAS}"]\nbase = "{MODEL}"\nctx_size = 512\nparallel = 2\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env["HEARTH_HOME"] = str(home)
    cmd = [
        *(sys.executable, "-m", "hearth", "serve", "--port", str(port)),
        *("--parallel", "4", "--max-queue", "8", "--ctx-size", "1024", "--config", str(config)),
    ]
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}"
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
        started = datetime.now(UTC).isoformat(timespec="seconds")
        tally, samples = asyncio.run(run_load(base_url, seconds, server.pid))
        time.sleep(2)  # aborted streams free their slots at the next engine step
        health = httpx.get(f"{base_url}/health", timeout=10).json()
        report = {
            "started": started,
            "seconds": seconds,
            "cpus": os.cpu_count(),
            **check(tally, samples, health, seconds),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    report["exit_code"] = server.returncode
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak-latest.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "soak-latest.md").write_text(markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=900, help="how long the load runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the reports go")
    args = parser.parse_args()
    report = soak(args.seconds, args.out)
    print(markdown(report))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
