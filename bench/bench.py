"""Throughput benchmark: starts `hearth serve`, streams chat completions at several client counts.

    .venv/bin/python bench/bench.py --clients 1,8 --requests 16 --max-tokens 128

Writes JSON and a markdown table (default bench/results/latest.json and .md) and prints the table.
Every request uses `ignore_eos`, so each one generates exactly --max-tokens tokens and runs at
different client counts do the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from hearth.settings import physical_cores

MODEL_ID = "smollm2:135m"
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 120.0
TERMINATE_GRACE_S = 10.0
RSS_INTERVAL_S = 0.1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who hates fire",
    "the last tree on Mars",
    "a talking cat",
    "a haunted library",
    "a time-travelling baker",
    "a shy volcano",
    "a detective snail",
    "the moon's day off",
    "a pirate who cannot swim",
    "a clock that runs backwards",
    "a city under the sea",
    "a forgetful wizard",
    "a dog who learns to paint",
    "the first snowflake of winter",
)

console = Console()


@dataclass
class RequestResult:
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class RunResult:
    clients: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int
    output_tok_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    peak_rss_mib: float | None
    max_batch_size: int | None
    engine_steps: int | None
    tokens_per_step: float | None
    first_error: str | None = None


def parse_clients(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("client counts must be positive integers")
    return sorted(set(values))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--clients", type=parse_clients, default=[1, 8], help="client counts (default 1,8)"
    )
    parser.add_argument(
        "--requests", type=positive_int, default=16, help="requests per run (default 16)"
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, default=128, help="tokens per request (default 128)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="server threads (default: physical)"
    )
    parser.add_argument(
        "--parallel", type=positive_int, default=None, help="server slots (default: max clients)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "latest.json", help="JSON output path"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    args = parser.parse_args(argv)
    args.threads = args.threads or physical_cores()
    args.parallel = args.parallel or max(args.clients)
    return args


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def read_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def machine_info(threads: int, parallel: int) -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo,
    ):
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    commit: str | None = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "-dirty" if dirty else ""
    versions: dict[str, str] = {}
    for dist in ("hearth", "llama-cpp-python"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "parallel": parallel,
        "python": platform.python_version(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


@contextlib.contextmanager
def hearth_server(
    port: int, threads: int, parallel: int, log: TextIO
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs `hearth serve` for the block and always stops it."""
    # Inherited HEARTH_* settings (an API key, another model) would skew or break the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    cmd = [sys.executable, "-m", "hearth", "serve", "--host", HOST, "--port", str(port)]
    cmd += ["--parallel", str(parallel), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_for_health(
    client: httpx.AsyncClient, server: subprocess.Popen[bytes]
) -> dict[str, Any]:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited during startup (code {server.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            response = await client.get("/health", timeout=2.0)
            if response.status_code == 200:
                health: dict[str, Any] = response.json()
                return health
        await asyncio.sleep(0.25)
    raise RuntimeError(f"the server was not healthy within {HEALTH_TIMEOUT_S:.0f} s")


async def get_health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health")
    response.raise_for_status()
    health: dict[str, Any] = response.json()
    return health


def prompt(index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    # Past the topic list, a suffix keeps every prompt distinct (no shared cached prefix).
    suffix = f" Version {index // len(TOPICS) + 1}." if index >= len(TOPICS) else ""
    return f"Write a short story about {topic}.{suffix}"


async def stream_chat(
    client: httpx.AsyncClient, model: str, index: int, max_tokens: int
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt(index)}],
        "temperature": 0.7,
        "seed": index,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = RequestResult()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                result.error = f"HTTP {response.status_code}: {response.text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if chunk.get("usage"):
                    result.completion_tokens = int(chunk["usage"]["completion_tokens"])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    now = time.perf_counter()
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    else:
                        result.itls_s.append(now - last)
                    last = now
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


async def sample_rss(pid: int, peak: list[int]) -> None:
    """Keeps peak[0] at the highest VmRSS seen until cancelled."""
    while True:
        rss = read_rss_kib(pid)
        if rss is not None and rss > peak[0]:
            peak[0] = rss
        await asyncio.sleep(RSS_INTERVAL_S)


async def run_once(
    client: httpx.AsyncClient,
    pid: int,
    model: str,
    clients: int,
    requests: int,
    max_tokens: int,
    first_index: int,
    progress: Progress,
    task: TaskID,
) -> RunResult:
    before = (await get_health(client))["engine"]
    gate = asyncio.Semaphore(clients)

    async def one(index: int) -> RequestResult:
        async with gate:
            result = await stream_chat(client, model, index, max_tokens)
        progress.advance(task)
        return result

    peak = [read_rss_kib(pid) or 0]
    sampler = asyncio.create_task(sample_rss(pid, peak))
    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(first_index + i) for i in range(requests)))
    finally:
        wall = time.perf_counter() - start
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    health = await get_health(client)

    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    itls = [gap for r in ok for gap in r.itls_s]
    steps = health["engine"]["steps"] - before["steps"]
    generated = health["engine"]["generated_tokens_total"] - before["generated_tokens_total"]
    return RunResult(
        clients=clients,
        requests=requests,
        errors=len(errors),
        wall_s=round(wall, 3),
        completion_tokens=tokens,
        output_tok_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_p50_ms=ms(percentile(ttfts, 50)),
        ttft_p95_ms=ms(percentile(ttfts, 95)),
        itl_p50_ms=ms(percentile(itls, 50)),
        peak_rss_mib=mib(peak[0] or None),
        max_batch_size=health.get("max_batch_size"),
        engine_steps=steps,
        tokens_per_step=round(generated / steps, 2) if steps else None,
        first_error=errors[0] if errors else None,
    )


async def benchmark(
    args: argparse.Namespace, server: subprocess.Popen[bytes], base_url: str
) -> dict[str, Any]:
    pid = server.pid
    limits = httpx.Limits(max_connections=max(args.clients) + 4, max_keepalive_connections=None)
    # Queued requests may wait long for a slot before their first byte, so no read timeout.
    timeout = httpx.Timeout(None, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        with console.status("Waiting for the server to load the model…"):
            health = await wait_for_health(client, server)
        model = health.get("model", MODEL_ID)
        rss_loaded = read_rss_kib(pid)
        console.print(f"Server ready: {model}, {health['slots_total']} slots, pid {pid}")

        # Warm-up: first-call allocations and page faults must not count against 1 client.
        warm = await stream_chat(client, model, len(args.clients) * args.requests, 8)
        if warm.error:
            raise RuntimeError(f"warm-up request failed: {warm.error}")

        runs: list[RunResult] = []
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for n, clients in enumerate(args.clients):
                task = progress.add_task(f"{clients:>3} client(s)", total=args.requests)
                run = await run_once(
                    client,
                    pid,
                    model,
                    clients,
                    args.requests,
                    args.max_tokens,
                    n * args.requests,
                    progress,
                    task,
                )
                runs.append(run)
                if run.errors:
                    console.print(f"[red]{run.errors} request(s) failed: {run.first_error}")

    return {
        "machine": {**machine_info(args.threads, args.parallel), "model": model},
        "config": {"requests": args.requests, "max_tokens": args.max_tokens},
        "server_rss_loaded_mib": mib(rss_loaded),
        "runs": [asdict(run) for run in runs],
        "speedup": speedup(runs),
    }


def speedup(runs: list[RunResult]) -> dict[str, Any] | None:
    """Aggregate tok/s at the largest client count over 1 client, when both ran."""
    single = next((r for r in runs if r.clients == 1), None)
    largest = max(runs, key=lambda r: r.clients, default=None)
    if single is None or largest is None or largest is single or not single.output_tok_s:
        return None
    return {
        "clients": largest.clients,
        "ratio": round(largest.output_tok_s / single.output_tok_s, 2),
    }


def fmt(value: float | int | None) -> str:
    if value is None:
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    config = report["config"]
    lines = [
        f"# Hearth benchmark — {machine['model']}",
        "",
        f"- CPU: {machine['cpu_model']} (nproc {machine['nproc']}), "
        f"threads {machine['threads']}, slots {machine['parallel']}",
        f"- {config['requests']} streaming chat requests per run, "
        f"{config['max_tokens']} tokens each (ignore_eos)",
        f"- Date {machine['date']}, commit {machine['git_commit'] or 'unknown'}, "
        f"server RSS after load {fmt(report['server_rss_loaded_mib'])} MiB",
        "",
        "| clients | tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | peak RSS MiB "
        "| max batch | tok/step | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        cells = [
            run["clients"],
            run["output_tok_s"],
            run["ttft_p50_ms"],
            run["ttft_p95_ms"],
            run["itl_p50_ms"],
            run["peak_rss_mib"],
            run["max_batch_size"],
            run["tokens_per_step"],
            run["errors"],
        ]
        lines.append("| " + " | ".join(fmt(cell) for cell in cells) + " |")
    if report["speedup"]:
        ratio = report["speedup"]
        lines += ["", f"Aggregate tok/s, {ratio['clients']} clients over 1: **{ratio['ratio']}×**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    log_path = out.parent / f"{out.stem}.server.log"
    with (
        open(log_path, "w", encoding="utf-8") as log,
        hearth_server(port, args.threads, args.parallel, log) as server,
    ):
        try:
            report = asyncio.run(benchmark(args, server, f"http://{HOST}:{port}"))
        except (RuntimeError, httpx.HTTPError) as exc:
            console.print(f"[red]Benchmark failed: {exc}[/red] (server log: {log_path})")
            return 1
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    table = markdown(report)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table, end="")
    console.print(f"Wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
