"""Side-by-side benchmark: Hearth, llama-cpp-python's own OpenAI server, and a bare llama.cpp loop.

    .venv/bin/python bench/bench.py                 # everything (make bench)
    .venv/bin/python bench/bench.py --quick         # smoke run: 1 and 4 clients, short requests

In order, on one machine and in one run, so that the ratios compare like with like:
1. bench/ceiling.py in a subprocess, with no server up: the bare decode loop's tok/s.
2. Each server in turn, alone: streaming chat requests at every client count (tok/s, TTFT, ITL,
   RSS), then the multi-turn case (TTFT of a long conversation, cold and with its prefix cached).
3. With Hearth up but idle: alternating rounds of the bare loop at batch 1 and one Hearth stream,
   for the 1-client decode ratio (the machine's speed drifts more than that gap), then of the
   bare loop at batch N and N Hearth streams (N the largest client count), for the aggregate.
4. bench/kv_memory.py, with no other server up: KV cache types and layouts (memory, decode
   speed, quality), and the prompt cache across a restart (TTFT restored vs cold).
5. bench/speculation.py: one stream with and without speculative decoding (an edit with and
   without `prediction`, a RAG quote, free story writing), two servers in alternating rounds;
   then bench/speculation_edits.py: predictions derived from the off server's own answer (a
   fence added, every tenth line changed, a name renamed), off, auto and on side by side at 1,
   4 and 16 clients.
Streams go through a lean client (sse_client.py), a blocking socket on a thread per stream: the
clients share the cores with the servers.
Both servers get the same requests, with the end-of-generation tokens banned through logit_bias
(the peer has no ignore_eos), so every request generates exactly --max-tokens tokens.
Writes bench/results/latest.json and latest.md (see bench/README.md for what each figure means).
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
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

import httptools
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

import kv_memory
import runner as runner_bench
import speculation
import speculation_edits
from hearth.models.registry import embedded_model_path
from hearth.settings import physical_cores
from prompts import chat_messages
from sse_client import SSEResponse, post_sse

MODEL_ID = "smollm2:135m"
HEARTH = "hearth"
PEER = "llama-cpp-python"
SERVERS = (HEARTH, PEER)
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0
TERMINATE_GRACE_S = 10.0
RSS_INTERVAL_S = 0.1
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# SmolLM2's end-of-generation tokens (llama_vocab_is_eog). Hearth's /tokenize and ceiling.py
# check these ids against the model at run time.
EOG_TOKENS = {"<|endoftext|>": 0, "<|im_end|>": 2, "<reponame>": 4}
# The most negative bias Hearth (and OpenAI) accept: far below any logit, so a ban.
EOG_BIAS = -100.0
# Hearth's sampler chain for these requests: logit_bias, top_k, min_p, temp, dist(seed).
SAMPLING: dict[str, Any] = {"temperature": 0.7, "top_p": 1.0, "top_k": 40, "min_p": 0.05}
# The peer's repeat_penalty defaults to 1.1, a penalties pass Hearth does not run; 1.0 is off.
PEER_SAMPLING: dict[str, Any] = {"repeat_penalty": 1.0}

# Acceptance (issue 3, item 6).
RSS_GROWTH_MAX = 1.3
WARM_COLD_MAX = 0.3
CEILING_MIN = {1: 0.95, 16: 0.85}
PEER_TOK_S_MIN = {1: 1.0, 16: 2.0}  # Hearth ÷ peer, aggregate output tok/s
PEER_TTFT_MAX = {16: 0.25}  # Hearth ÷ peer, TTFT p50
SIDE_BY_SIDE_MIN_REQUESTS = 4  # per round at 1 client: a stream each is too short to compare

MULTI_TURN_MAX_TOKENS = 8  # only the first token's latency matters there

console = Console()


# -- options ------------------------------------------------------------------------------------


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return sorted(set(values))


def parse_servers(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in SERVERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"servers are {', '.join(SERVERS)}; got {text!r}")
    return [name for name in SERVERS if name in names]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


# Full run, and what --quick changes unless the flag is given explicitly.
DEFAULTS: dict[str, Any] = {
    "clients": [1, 4, 16],
    "requests": 32,
    "max_tokens": 128,
    "multi_turn_repeats": 3,
    "ceiling_repeats": 3,
    "paired_rounds": 12,
    "paired_rounds_top": 6,
    "peer_rounds": 4,
    "speculation_rounds": 3,
}
QUICK: dict[str, Any] = {
    "clients": [1, 4],
    "requests": 8,
    "max_tokens": 32,
    "multi_turn_repeats": 1,
    "ceiling_repeats": 1,
    "paired_rounds": 2,
    "paired_rounds_top": 1,
    "peer_rounds": 1,
    "speculation_rounds": 1,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--servers",
        type=parse_servers,
        default=list(SERVERS),
        help=f"comma-separated, of {','.join(SERVERS)} (default both)",
    )
    parser.add_argument("--clients", type=parse_ints, help="client counts (default 1,4,16)")
    parser.add_argument(
        "--requests", type=positive_int, help="requests per run, at every client count (32)"
    )
    parser.add_argument("--max-tokens", type=positive_int, help="tokens per request (128)")
    parser.add_argument(
        "--threads", type=positive_int, help="threads of both servers (default: physical cores)"
    )
    parser.add_argument(
        "--parallel", type=positive_int, help="Hearth's slots (default: max clients)"
    )
    parser.add_argument(
        "--hearth-ctx-size", type=positive_int, default=2048, help="Hearth's ctx per slot (2048)"
    )
    parser.add_argument(
        "--peer-ctx-size", type=positive_int, default=4096, help="the peer's n_ctx (4096)"
    )
    parser.add_argument(
        "--peer-flash-attn",
        choices=("on", "off"),
        default="on",
        help="the peer's flash attention; on matches Hearth, whose llama.cpp 'auto' picks it",
    )
    parser.add_argument(
        "--multi-turn-repeats",
        type=non_negative_int,
        help="cold and warm repetitions of the multi-turn case; 0 skips it (3)",
    )
    parser.add_argument(
        "--ceiling-repeats", type=non_negative_int, help="ceiling runs per batch; 0 skips it (3)"
    )
    parser.add_argument(
        "--paired-rounds",
        type=non_negative_int,
        help="alternating rounds of the bare loop and one Hearth stream, for the 1-client decode "
        "ratio; 0 skips them (12)",
    )
    parser.add_argument(
        "--paired-rounds-top",
        type=non_negative_int,
        help="alternating rounds of the bare loop at batch N and N concurrent Hearth streams, N "
        "the largest client count, for the aggregate ratio; 0 skips them (6)",
    )
    parser.add_argument(
        "--peer-rounds",
        type=non_negative_int,
        help="with both servers up at once, alternating rounds of each at 1 client and at the "
        "largest count, for the Hearth ÷ peer ratios; 0 skips them (4)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: clients 1,4, 8 requests, 32 tokens, 1 multi-turn and ceiling repeat, "
        "2 + 1 paired rounds, 1 side-by-side round",
    )
    parser.add_argument(
        "--no-kv-memory",
        action="store_true",
        help="skip bench/kv_memory.py (KV cache types and layouts, the restart's TTFT)",
    )
    parser.add_argument(
        "--no-runner",
        action="store_true",
        help="skip bench/runner.py (runner processes against the in-process engine)",
    )
    parser.add_argument(
        "--speculation-rounds",
        type=non_negative_int,
        help="paired rounds of bench/speculation.py's cases; 0 skips them (3)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "latest.json", help="JSON output path"
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.threads = args.threads or physical_cores()
    args.parallel = args.parallel or max(args.clients)
    return args


# -- small helpers ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


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


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo,
    ):
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()

    commit: str | None = None
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = git("rev-parse", "--short", "HEAD")
        commit += "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    versions: dict[str, str] = {}
    for dist in ("hearth", "llama-cpp-python", "fastapi", "uvicorn", "sse-starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    mem_total_kib: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as meminfo:
        mem_total_kib = int(meminfo.readline().split()[1])
    return {
        "model": MODEL_ID,
        "cpu_model": cpu_model,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "mem_total_mib": mib(mem_total_kib),
        # A busy neighbour skews everything here; the load at the start says whether there was one.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "threads": args.threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
    }


# -- the ceiling --------------------------------------------------------------------------------


def ceiling_process(
    args: argparse.Namespace, sizes: list[int], repeats: int, variant: int | None = None
) -> dict[str, Any]:
    """bench/ceiling.py in its own process: its JSON report, or {"error": …}."""
    cmd = [sys.executable, str(BENCH_DIR / "ceiling.py"), "--json"]
    cmd += ["--batch-sizes", ",".join(map(str, sizes)), "--tokens", str(args.max_tokens)]
    cmd += ["--threads", str(args.threads), "--ctx-per-seq", str(args.hearth_ctx_size)]
    cmd += ["--repeats", str(repeats)]
    if variant is not None:
        cmd += ["--variant", str(variant)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": f"ceiling.py exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def run_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The ceiling at batch 1 and the largest client count, started while no server runs."""
    sizes = sorted({1, max(args.clients)})
    with console.status(f"Ceiling: bare llama.cpp decode loop, batch {sizes}…"):
        report = ceiling_process(args, sizes, args.ceiling_repeats)
    if "error" in report:
        return report
    if sorted(report["eog_tokens"]) != sorted(EOG_TOKENS.values()):
        report["warning"] = (
            f"the model's EOG tokens are {report['eog_tokens']}, not the banned ones"
        )
    for row in report["results"]:
        console.print(f"Ceiling batch {row['batch_size']:>2}: {row['tok_s']} tok/s")
    return report


# -- servers ------------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    name: str
    cmd: list[str]
    ready_path: str
    env: dict[str, str]
    base_url: str


def server_spec(name: str, args: argparse.Namespace, port: int) -> ServerSpec:
    if name == HEARTH:
        # Inherited HEARTH_* settings (an API key, another model) would skew or break the run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        cmd = [sys.executable, "-m", "hearth", "serve", "--host", HOST, "--port", str(port)]
        cmd += ["--parallel", str(args.parallel), "--threads", str(args.threads)]
        cmd += ["--ctx-size", str(args.hearth_ctx_size)]
        return ServerSpec(name, cmd, "/health", env, f"http://{HOST}:{port}")
    # The peer's settings also read unprefixed env vars (MODEL, PORT, CONFIG_FILE…); the flags
    # below win over them, and CONFIG_FILE would replace them all, so drop it.
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path())]
    cmd += ["--model_alias", MODEL_ID, "--n_ctx", str(args.peer_ctx_size)]
    cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
    cmd += ["--flash_attn", str(args.peer_flash_attn == "on")]
    # Queued requests must wait their turn, not cut off the one streaming (its default).
    cmd += ["--interrupt_requests", "False", "--verbose", "False"]
    cmd += ["--host", HOST, "--port", str(port)]
    return ServerSpec(name, cmd, "/v1/models", env, f"http://{HOST}:{port}")


@contextlib.contextmanager
def running(spec: ServerSpec, log: TextIO) -> Iterator[subprocess.Popen[bytes]]:
    """Runs the server for the block and always stops it."""
    proc = subprocess.Popen(spec.cmd, stdout=log, stderr=subprocess.STDOUT, env=spec.env)
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


async def wait_until_ready(
    client: httpx.AsyncClient, server: subprocess.Popen[bytes], path: str
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited during startup (code {server.returncode})")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(path, timeout=2.0)).status_code == 200:
                return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")


async def get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


async def check_eog_ids(client: httpx.AsyncClient) -> None:
    """The banned ids must be the model's end-of-generation tokens, or the runs would differ."""
    for text, expected in EOG_TOKENS.items():
        response = await client.post("/tokenize", json={"content": text})
        response.raise_for_status()
        tokens = response.json()["tokens"]
        if tokens != [expected]:
            raise RuntimeError(f"{text} tokenizes to {tokens}, not [{expected}]")


# -- requests -----------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ttft_s: float | None = None
    itls_s: list[float] = field(default_factory=list)
    content_chunks: int = 0
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: str | None = None


def chat_body(
    server: str, messages: list[dict[str, str]], max_tokens: int, seed: int, *, stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": messages,
        "max_tokens": max_tokens,
        "seed": seed,
        "logit_bias": {str(t): EOG_BIAS for t in EOG_TOKENS.values()},
        "stream": stream,
        **SAMPLING,
    }
    if stream:
        # Hearth sends usage in the last chunk; the peer ignores stream_options.
        body["stream_options"] = {"include_usage": True}
    if server == PEER:
        body.update(PEER_SAMPLING)  # Hearth answers unknown fields with a 400
    return body


def story(index: int) -> list[dict[str, str]]:
    return chat_messages(index)


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    """One streamed chat request to `client`'s server through the lean client (sse_client.py),
    on a thread of its own: TTFT and the gaps between content chunks, from the time each
    event's bytes arrived."""
    url = client.base_url
    assert url.port is not None
    try:
        sent, response = await asyncio.to_thread(
            post_sse, url.host, url.port, "/v1/chat/completions", body
        )
    except (OSError, httptools.HttpParserError) as exc:
        return RequestResult(error=f"{type(exc).__name__}: {exc}")
    return stream_result(sent, response)


def stream_result(sent: float, response: SSEResponse) -> RequestResult:
    result = RequestResult()
    if response.status_code != 200:
        text = response.body.decode("utf-8", "replace")
        result.error = f"HTTP {response.status_code}: {text[:200]}"
        return result
    last = sent
    for event in response.events:
        if event.data == b"[DONE]":
            return result
        try:
            chunk = json.loads(event.data)
        except json.JSONDecodeError as exc:
            result.error = f"JSONDecodeError: {exc}"
            return result
        if "error" in chunk:
            result.error = str(chunk["error"])[:200]
            return result
        if chunk.get("usage"):
            result.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            result.finish_reason = choice.get("finish_reason") or result.finish_reason
            if not (choice.get("delta") or {}).get("content"):
                continue
            if result.ttft_s is None:
                result.ttft_s = event.at - sent
            else:
                result.itls_s.append(event.at - last)
            last = event.at
            result.content_chunks += 1
    if not response.complete:
        result.error = "the stream ended before its last event"
    return result


def completion_tokens(result: RequestResult, max_tokens: int) -> tuple[int, str]:
    """The tokens a request generated, and how that number was known."""
    if result.usage is not None:
        return int(result.usage["completion_tokens"]), "usage"
    # The peer sends no usage in streams. With EOS banned, "length" means exactly max_tokens
    # (checked non-streamed at startup); its content chunks can merge tokens, so undercount.
    if result.finish_reason == "length":
        return max_tokens, "finish_reason=length"
    return result.content_chunks, "content chunks"


async def check_exact_length(client: httpx.AsyncClient, server: str) -> dict[str, Any]:
    """One non-streamed request: the usage must say exactly max_tokens, finish_reason length."""
    n = 16
    body = chat_body(server, story(0), n, seed=0, stream=False)
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    reply = response.json()
    got = int(reply["usage"]["completion_tokens"])
    finish = reply["choices"][0]["finish_reason"]
    if got != n or finish != "length":
        raise RuntimeError(f"asked {n} tokens with EOS banned, got {got} ({finish})")
    return {"max_tokens": n, "completion_tokens": got, "finish_reason": finish}


async def sample_rss(pid: int, peak: list[int]) -> None:
    """Keeps peak[0] at the highest VmRSS seen until cancelled."""
    while True:
        rss = read_rss_kib(pid)
        if rss is not None and rss > peak[0]:
            peak[0] = rss
        await asyncio.sleep(RSS_INTERVAL_S)


# -- one server ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    clients: int
    requests: int
    errors: int
    wall_s: float
    completion_tokens: int
    token_count: str
    output_tok_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    peak_rss_mib: float | None
    max_batch_size: int | None = None
    tokens_per_step: float | None = None
    first_error: str | None = None


async def run_clients(
    client: httpx.AsyncClient,
    server: str,
    pid: int,
    clients: int,
    args: argparse.Namespace,
    first_index: int,
    progress: Progress,
    task: TaskID,
) -> RunResult:
    hearth = server == HEARTH
    before = (await get_json(client, "/health"))["engine"] if hearth else None
    gate = asyncio.Semaphore(clients)

    async def one(index: int) -> RequestResult:
        async with gate:
            body = chat_body(server, story(index), args.max_tokens, index, stream=True)
            result = await stream_chat(client, body)
        progress.advance(task)
        return result

    peak = [read_rss_kib(pid) or 0]
    sampler = asyncio.create_task(sample_rss(pid, peak))
    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(first_index + i) for i in range(args.requests)))
    finally:
        wall = time.perf_counter() - start
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    counted = [completion_tokens(r, args.max_tokens) for r in ok]
    tokens = sum(n for n, _ in counted)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    itls = [gap for r in ok for gap in r.itls_s]
    run = RunResult(
        clients=clients,
        requests=args.requests,
        errors=len(errors),
        wall_s=round(wall, 3),
        completion_tokens=tokens,
        token_count=", ".join(sorted({how for _, how in counted})) or "–",
        output_tok_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_p50_ms=ms(percentile(ttfts, 50)),
        ttft_p95_ms=ms(percentile(ttfts, 95)),
        itl_p50_ms=ms(percentile(itls, 50)),
        peak_rss_mib=mib(peak[0] or None),
        first_error=errors[0] if errors else None,
    )
    if before is not None:
        health = await get_json(client, "/health")
        steps = health["engine"]["steps"] - before["steps"]
        generated = health["engine"]["generated_tokens_total"] - before["generated_tokens_total"]
        run.max_batch_size = health.get("max_batch_size")
        run.tokens_per_step = round(generated / steps, 2) if steps else None
    return run


# ~1,500 tokens of fixed chat: the history a client resends with every new message.
_SUBJECTS = (
    "the water cycle",
    "how bridges carry weight",
    "why the sky is blue",
    "how bees find flowers",
    "what makes bread rise",
    "how tides follow the moon",
    "why leaves change colour",
    "how a compass works",
)
_FACTS = (
    "The first thing to notice is that {s} follows from a few simple rules.",
    "People have studied {s} for centuries, and the basic picture has held up well.",
    "A common mistake is to think that {s} needs a complicated explanation.",
    "If you watch closely, you can see {s} at work in everyday life.",
    "Teachers often use a simple experiment to show {s} to children.",
    "The details of {s} still surprise scientists now and then.",
    "Every part of {s} depends on energy moving from one place to another.",
    "In short, {s} is a good example of nature being both simple and clever.",
)


def conversation(marker: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": f"{marker} You are a patient, friendly tutor."}]
    for i, subject in enumerate(_SUBJECTS):
        messages.append({"role": "user", "content": f"Can you explain {subject}, in detail?"})
        # Ten sentences per answer: about 1,590 tokens in all with the new message.
        sentences = [_FACTS[(i + j) % len(_FACTS)].format(s=subject) for j in range(10)]
        messages.append({"role": "assistant", "content": " ".join(sentences)})
    return messages


NEW_MESSAGE = {"role": "user", "content": "Thank you! Now summarise all of that in one sentence."}


async def multi_turn(
    client: httpx.AsyncClient,
    server: str,
    repeats: int,
    progress: Progress,
    task: TaskID,
) -> dict[str, Any]:
    """TTFT of history + a new message: cold (an unseen prefix) and warm (the history sent once
    before). A unique marker first in each conversation keeps it unseen until then."""

    async def ask(messages: list[dict[str, str]], max_tokens: int, seed: int) -> RequestResult:
        result = await stream_chat(
            client, chat_body(server, messages, max_tokens, seed, stream=True)
        )
        progress.advance(task)
        if result.error:
            raise RuntimeError(f"multi-turn request failed: {result.error}")
        return result

    cold: list[RequestResult] = []
    warm: list[RequestResult] = []
    for r in range(repeats):
        cold.append(
            await ask([*conversation(f"[cold {r}]"), NEW_MESSAGE], MULTI_TURN_MAX_TOKENS, r)
        )
        history = conversation(f"[warm {r}]")
        await ask(history, 1, r)  # the previous turn: puts the history in the server's cache
        warm.append(await ask([*history, NEW_MESSAGE], MULTI_TURN_MAX_TOKENS, r))

    def ttfts(results: list[RequestResult]) -> list[float]:
        return [r.ttft_s for r in results if r.ttft_s is not None]

    def cached(result: RequestResult) -> int | None:
        details = (result.usage or {}).get("prompt_tokens_details") or {}
        value = details.get("cached_tokens")
        return None if value is None else int(value)

    cold_ms, warm_ms = ms(median(ttfts(cold))), ms(median(ttfts(warm)))
    return {
        "repeats": repeats,
        "prompt_tokens": (cold[0].usage or {}).get("prompt_tokens") if cold else None,
        "cold_ttft_ms": [ms(t) for t in ttfts(cold)],
        "warm_ttft_ms": [ms(t) for t in ttfts(warm)],
        "cold_ttft_p50_ms": cold_ms,
        "warm_ttft_p50_ms": warm_ms,
        "warm_over_cold": ratio(warm_ms, cold_ms),
        "cold_cached_tokens": [cached(r) for r in cold],
        "warm_cached_tokens": [cached(r) for r in warm],
    }


async def paired_decode(
    client: httpx.AsyncClient, args: argparse.Namespace, progress: Progress, task: TaskID
) -> dict[str, Any]:
    """Hearth's 1-client decode speed against the bare loop's, measured in alternating rounds.

    The machine is shared and its speed drifts by 10-20% within minutes, more than the gap being
    measured; a ceiling taken once at the start compares different minutes. Each round runs the
    bare loop at batch 1 (its own process; Hearth is up but idle, using no CPU), then one Hearth
    stream of the same prompt and length, and the figure is the median of the per-round ratios.
    Both sides are medians: the bare loop's median step, and the stream's median gap between
    content chunks (ITL p50)."""
    rounds: list[dict[str, Any]] = []
    for index in range(args.paired_rounds):
        bare = await asyncio.to_thread(ceiling_process, args, [1], 1)
        if "error" in bare:
            return {"error": bare["error"], "rounds": rounds}
        # story(0) is the bare loop's prompt too; the seed varies by round.
        body = chat_body(HEARTH, story(0), args.max_tokens, 30_000 + index, stream=True)
        result = await stream_chat(client, body)
        if result.error:
            return {"error": f"Hearth stream failed: {result.error}", "rounds": rounds}
        bare_tok_s = bare["results"][0]["tok_s_p50"]
        itl_p50 = percentile(result.itls_s, 50)
        hearth_tok_s = round(1 / itl_p50, 2) if itl_p50 else None
        rounds.append(
            {
                "ceiling_tok_s_p50": bare_tok_s,
                "hearth_tok_s_p50": hearth_tok_s,
                "ratio": ratio(hearth_tok_s, bare_tok_s),
            }
        )
        progress.advance(task)
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    middle = round(statistics.median(ratios), 3) if ratios else None
    return {"rounds": rounds, "ratio_median": middle}


async def paired_aggregate(
    client: httpx.AsyncClient, args: argparse.Namespace, progress: Progress, task: TaskID
) -> dict[str, Any]:
    """Hearth's aggregate at N concurrent streams (N the largest client count) against the bare
    loop's at batch N, in alternating rounds, for the same reason as paired_decode.

    Both sides do the same work: prefill N prompts, then decode --max-tokens tokens for each,
    so the bare loop's figure is its prefill + decode rate and Hearth's is its output tokens over
    the wall time of the N streams. Every round uses prompts no earlier round used (a variant
    tag at the start of the system message), so Hearth cannot skip a prefill from its cache."""
    size = max(args.clients)
    rounds: list[dict[str, Any]] = []
    for index in range(args.paired_rounds_top):
        variant = 1 + index
        bare = await asyncio.to_thread(ceiling_process, args, [size], 1, variant)
        if "error" in bare:
            return {"error": bare["error"], "clients": size, "rounds": rounds}
        bodies = [
            chat_body(HEARTH, chat_messages(i, variant), args.max_tokens, 40_000 + i, stream=True)
            for i in range(size)
        ]
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(client, body) for body in bodies))
        wall = time.perf_counter() - start
        failed = next((r.error for r in results if r.error), None)
        if failed:
            return {"error": f"Hearth stream failed: {failed}", "clients": size, "rounds": rounds}
        tokens = sum(completion_tokens(r, args.max_tokens)[0] for r in results)
        bare_tok_s = bare["results"][0]["e2e_tok_s"]
        hearth_tok_s = round(tokens / wall, 2)
        rounds.append(
            {
                "ceiling_e2e_tok_s": bare_tok_s,
                "ceiling_decode_tok_s": bare["results"][0]["tok_s"],
                "hearth_tok_s": hearth_tok_s,
                "ratio": ratio(hearth_tok_s, bare_tok_s),
            }
        )
        progress.advance(task)
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    middle = round(statistics.median(ratios), 3) if ratios else None
    return {"clients": size, "rounds": rounds, "ratio_median": middle}


async def bench_server(
    spec: ServerSpec, args: argparse.Namespace, proc: subprocess.Popen[bytes], base_url: str
) -> dict[str, Any]:
    server, pid = spec.name, proc.pid
    # A thread per concurrent stream (sse_client.py blocks), and some for the bench's own work.
    workers = max(args.clients) + 4
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=workers))
    limits = httpx.Limits(max_connections=max(args.clients) + 4, max_keepalive_connections=None)
    # Queued requests may wait long before their first byte (the peer serves one at a time).
    timeout = httpx.Timeout(None, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        with console.status(f"{server}: waiting for the model to load…"):
            await wait_until_ready(client, proc, spec.ready_path)
        rss_loaded = read_rss_kib(pid)
        console.print(f"{server} ready (pid {pid}), RSS {mib(rss_loaded)} MiB")
        if server == HEARTH:
            await check_eog_ids(client)
        exact = await check_exact_length(client, server)
        # Warm-up: first-call allocations and page faults must not count against 1 client.
        warm = await stream_chat(client, chat_body(server, story(10_000), 8, 0, stream=True))
        if warm.error:
            raise RuntimeError(f"warm-up request failed: {warm.error}")

        runs: list[RunResult] = []
        turns: dict[str, Any] | None = None
        paired: dict[str, Any] | None = None
        paired_top: dict[str, Any] | None = None
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for n, clients in enumerate(args.clients):
                task = progress.add_task(
                    f"{server:>16} {clients:>3} client(s)", total=args.requests
                )
                run = await run_clients(
                    client, server, pid, clients, args, n * args.requests, progress, task
                )
                runs.append(run)
                if run.errors:
                    console.print(f"[red]{run.errors} request(s) failed: {run.first_error}")
            if args.multi_turn_repeats:
                task = progress.add_task(
                    f"{server:>16} multi-turn", total=3 * args.multi_turn_repeats
                )
                turns = await multi_turn(client, server, args.multi_turn_repeats, progress, task)
            if server == HEARTH and args.paired_rounds:
                task = progress.add_task(
                    f"{server:>16} paired with bare loop", total=args.paired_rounds
                )
                paired = await paired_decode(client, args, progress, task)
            if server == HEARTH and args.paired_rounds_top and max(args.clients) > 1:
                task = progress.add_task(
                    f"{server:>16} paired at {max(args.clients)} clients",
                    total=args.paired_rounds_top,
                )
                paired_top = await paired_aggregate(client, args, progress, task)
    return {
        "server": server,
        "rss_loaded_mib": mib(rss_loaded),
        "exact_length_check": exact,
        "runs": [asdict(run) for run in runs],
        "multi_turn": turns,
        "paired_decode": paired,
        "paired_aggregate": paired_top,
    }


def run_server(server: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    spec = server_spec(server, args, port)
    log_path = args.out.parent / f"{args.out.stem}.{server}.log"
    with open(log_path, "w", encoding="utf-8") as log, running(spec, log) as proc:
        try:
            report = asyncio.run(bench_server(spec, args, proc, spec.base_url))
        except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
            console.print(f"[red]{server} failed: {exc}[/red] (server log: {log_path})")
            report = {"server": server, "error": f"{type(exc).__name__}: {exc}"}
    report["command"] = spec.cmd
    report["log"] = str(log_path)
    return report


# -- both servers side by side ------------------------------------------------------------------


async def side_by_side_round(
    client: httpx.AsyncClient, server: str, clients: int, first_index: int, max_tokens: int
) -> dict[str, Any]:
    """One round against one server: max(clients, 4) requests, `clients` at a time."""
    requests = max(clients, SIDE_BY_SIDE_MIN_REQUESTS)
    gate = asyncio.Semaphore(clients)

    async def one(index: int) -> RequestResult:
        async with gate:
            body = chat_body(server, story(index), max_tokens, index, stream=True)
            return await stream_chat(client, body)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(first_index + i) for i in range(requests)))
    wall = time.perf_counter() - start
    failed = next((r.error for r in results if r.error), None)
    if failed:
        raise RuntimeError(f"{server}: {failed}")
    tokens = sum(completion_tokens(r, max_tokens)[0] for r in results)
    ttfts = [r.ttft_s for r in results if r.ttft_s is not None]
    return {"tok_s": round(tokens / wall, 2), "ttft_p50_ms": ms(percentile(ttfts, 50))}


async def side_by_side(
    specs: dict[str, ServerSpec],
    procs: dict[str, subprocess.Popen[bytes]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Alternating rounds of Hearth and the peer, both up at once (an idle server uses no CPU),
    so that each ratio compares the same minutes of a machine whose speed drifts."""
    workers = max(args.clients) + 4
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=workers))
    sizes = sorted({1, max(args.clients)})
    timeout = httpx.Timeout(None, connect=10.0)
    clients: dict[str, httpx.AsyncClient] = {}
    try:
        for name, spec in specs.items():
            clients[name] = httpx.AsyncClient(base_url=spec.base_url, timeout=timeout)
            with console.status(f"side by side: waiting for {name}…"):
                await wait_until_ready(clients[name], procs[name], spec.ready_path)
        # Unique prompts for every request of every round, as in the runs.
        next_index = 50_000
        for name in specs:  # warm-up: first-call allocations, and every slot used once
            await side_by_side_round(clients[name], name, max(sizes), next_index, 8)
        next_index += max(max(sizes), SIDE_BY_SIDE_MIN_REQUESTS)
        results: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(
                "side by side, alternating rounds", total=args.peer_rounds * len(sizes)
            )
            for index in range(args.peer_rounds):
                for size in sizes:
                    order = [HEARTH, PEER] if index % 2 == 0 else [PEER, HEARTH]
                    got = {}
                    for name in order:
                        got[name] = await side_by_side_round(
                            clients[name], name, size, next_index, args.max_tokens
                        )
                    next_index += max(size, SIDE_BY_SIDE_MIN_REQUESTS)
                    results[size].append(
                        {
                            "hearth": got[HEARTH],
                            "peer": got[PEER],
                            "tok_s_ratio": ratio(got[HEARTH]["tok_s"], got[PEER]["tok_s"]),
                            "ttft_p50_ratio": ratio(
                                got[HEARTH]["ttft_p50_ms"], got[PEER]["ttft_p50_ms"]
                            ),
                        }
                    )
                    progress.advance(task)
    finally:
        for client in clients.values():
            await client.aclose()

    def middle(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [row[key] for row in rows if row[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "rounds": args.peer_rounds,
        "by_clients": [
            {
                "clients": size,
                "requests_per_round": max(size, SIDE_BY_SIDE_MIN_REQUESTS),
                "rounds": rows,
                "tok_s_ratio_median": middle(rows, "tok_s_ratio"),
                "ttft_p50_ratio_median": middle(rows, "ttft_p50_ratio"),
            }
            for size, rows in results.items()
        ],
    }


def run_side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    specs = {name: server_spec(name, args, free_port()) for name in (HEARTH, PEER)}
    with contextlib.ExitStack() as stack:
        procs = {}
        for name, spec in specs.items():
            log_path = args.out.parent / f"{args.out.stem}.side-by-side.{name}.log"
            log = stack.enter_context(open(log_path, "w", encoding="utf-8"))
            procs[name] = stack.enter_context(running(spec, log))
        try:
            return asyncio.run(side_by_side(specs, procs, args))
        except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
            console.print(f"[red]side by side failed: {exc}[/red]")
            return {"error": f"{type(exc).__name__}: {exc}"}


# -- the report ---------------------------------------------------------------------------------


def find_run(report: dict[str, Any] | None, clients: int) -> dict[str, Any] | None:
    runs = (report or {}).get("runs") or []
    return next((r for r in runs if r["clients"] == clients), None)


def comparisons(
    args: argparse.Namespace, hearth: dict[str, Any] | None, peer: dict[str, Any] | None
) -> list[dict[str, Any]]:
    rows = []
    for clients in args.clients:
        h, p = find_run(hearth, clients), find_run(peer, clients)
        if h is None or p is None:
            continue
        rows.append(
            {
                "clients": clients,
                "hearth_tok_s": h["output_tok_s"],
                "peer_tok_s": p["output_tok_s"],
                "tok_s_ratio": ratio(h["output_tok_s"], p["output_tok_s"]),
                "hearth_ttft_p50_ms": h["ttft_p50_ms"],
                "peer_ttft_p50_ms": p["ttft_p50_ms"],
                "ttft_p50_ratio": ratio(h["ttft_p50_ms"], p["ttft_p50_ms"]),
            }
        )
    return rows


def acceptance(
    args: argparse.Namespace,
    hearth: dict[str, Any] | None,
    ceiling: dict[str, Any] | None,
    side: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """The issue's acceptance figures for Hearth; `pass` is None where a figure is missing."""

    def row(figure: str, value: float | None, op: str, target: float | None) -> dict[str, Any]:
        passed = None
        if value is not None and target is not None:
            passed = value <= target if op == "≤" else value >= target
        return {"figure": figure, "value": value, "target": target, "op": op, "pass": passed}

    rows = []
    top = max(args.clients)
    h_top = find_run(hearth, top)
    loaded = (hearth or {}).get("rss_loaded_mib")
    rows.append(
        row(
            f"Hearth peak RSS at {top} clients ÷ RSS after load",
            ratio(h_top["peak_rss_mib"] if h_top else None, loaded),
            "≤",
            RSS_GROWTH_MAX,
        )
    )
    turns = (hearth or {}).get("multi_turn") or {}
    rows.append(
        row(
            "Hearth multi-turn TTFT p50, warm ÷ cold",
            turns.get("warm_over_cold"),
            "≤",
            WARM_COLD_MAX,
        )
    )
    paired = (hearth or {}).get("paired_decode") or {}
    if paired:
        rows.append(
            row(
                "Hearth 1 client decode tok/s (1 ÷ ITL p50) ÷ bare loop batch 1 (1 ÷ median step), "
                f"median of {len(paired.get('rounds') or [])} alternating rounds",
                paired.get("ratio_median"),
                "≥",
                CEILING_MIN[1],
            )
        )
    for entry in (side or {}).get("by_clients") or []:
        size, rounds = entry["clients"], len(entry["rounds"])
        rows.append(
            row(
                f"Hearth ÷ llama-cpp-python at {size} client(s), aggregate tok/s, median of "
                f"{rounds} alternating rounds",
                entry["tok_s_ratio_median"],
                "≥",
                PEER_TOK_S_MIN.get(size),
            )
        )
        if size in PEER_TTFT_MAX:
            rows.append(
                row(
                    f"Hearth ÷ llama-cpp-python at {size} clients, TTFT p50, median of {rounds} "
                    "alternating rounds",
                    entry["ttft_p50_ratio_median"],
                    "≤",
                    PEER_TTFT_MAX[size],
                )
            )
    paired_top = (hearth or {}).get("paired_aggregate") or {}
    if paired_top:
        size = paired_top["clients"]
        rows.append(
            row(
                f"Hearth {size} clients aggregate tok/s ÷ bare loop batch {size} prefill + decode "
                f"tok/s, median of {len(paired_top.get('rounds') or [])} alternating rounds",
                paired_top.get("ratio_median"),
                "≥",
                CEILING_MIN.get(size),
            )
        )
    for entry in (ceiling or {}).get("results") or []:
        size = entry["batch_size"]
        h = find_run(hearth, size)
        # The targets are on the paired rounds above: these figures compare runs minutes apart,
        # and are shown for reference.
        target = None
        if size == 1:
            itl = h["itl_p50_ms"] if h else None
            decode_tok_s = 1000.0 / itl if itl else None
            rows.append(
                row(
                    "Hearth 1 client decode tok/s (1 ÷ ITL p50) ÷ ceiling batch 1 "
                    "(1 ÷ median step), ceiling run at the start",
                    ratio(decode_tok_s, entry.get("tok_s_p50")),
                    "≥",
                    target,
                )
            )
        rows.append(
            row(
                f"Hearth {size} client(s) aggregate ÷ ceiling batch {size} decode only",
                ratio(h["output_tok_s"] if h else None, entry["tok_s"]),
                "≥",
                target,
            )
        )
        if entry.get("e2e_tok_s"):
            rows.append(
                row(
                    f"Hearth {size} client(s) aggregate ÷ ceiling batch {size} prefill + decode",
                    ratio(h["output_tok_s"] if h else None, entry["e2e_tok_s"]),
                    "≥",
                    target,
                )
            )
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in cells) + " |" for cells in rows]
    return lines


def markdown(report: dict[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    servers: dict[str, dict[str, Any]] = report["servers"]
    lines = [
        f"# Hearth vs llama-cpp-python — {machine['model']}",
        "",
        f"- CPU: {machine['cpu_model']} (nproc {machine['nproc']}), "
        f"{machine['mem_total_mib']} MiB, load average at start {machine['loadavg_at_start']}",
        f"- Both servers: {machine['threads']} threads. Hearth: {config['hearth_parallel']} slots "
        f"× {config['hearth_ctx_size']} ctx. llama-cpp-python: n_ctx {config['peer_ctx_size']}, "
        f"flash attention {config['peer_flash_attn']}, one request at a time",
        f"- {config['requests']} streaming chat requests per run at every client count, "
        f"{config['max_tokens']} tokens each (EOS banned with logit_bias on both), sampling "
        f"{config['sampling']}",
        f"- Date {machine['date']}, commit {machine['git_commit'] or 'unknown'}, "
        f"versions {machine['versions']}",
    ]

    lines += ["", "## Acceptance", ""]
    lines += table(
        ["figure", "value", "target", "result"],
        [
            [
                a["figure"],
                a["value"],
                f"{a['op']} {a['target']:g}" if a["target"] is not None else "–",
                {True: "**pass**", False: "**FAIL**", None: "–"}[a["pass"]],
            ]
            for a in report["acceptance"]
        ],
    )

    lines += ["", "## Throughput and latency", ""]
    rows = []
    for name, server in servers.items():
        if server.get("error"):
            lines.append(f"- **{name} failed**: {server['error']}")
            continue
        for run in server["runs"]:
            rows.append(
                [
                    name,
                    run["clients"],
                    run["output_tok_s"],
                    run["ttft_p50_ms"],
                    run["ttft_p95_ms"],
                    run["itl_p50_ms"],
                    server["rss_loaded_mib"],
                    run["peak_rss_mib"],
                    run["max_batch_size"],
                    run["tokens_per_step"],
                    run["token_count"],
                    run["errors"],
                ]
            )
    header = ["server", "clients", "tok/s", "TTFT p50 ms", "TTFT p95 ms", "ITL p50 ms"]
    header += ["RSS after load MiB", "peak RSS MiB", "max batch", "tok/step", "tokens from"]
    lines += table([*header, "errors"], rows)

    if report["comparison"]:
        lines += ["", "## Hearth ÷ llama-cpp-python (same run, servers minutes apart)", ""]
        lines += table(
            [
                "clients",
                "tok/s Hearth",
                "tok/s peer",
                "ratio",
                "TTFT p50 ms Hearth",
                "peer",
                "ratio",
            ],
            [
                [
                    c["clients"],
                    c["hearth_tok_s"],
                    c["peer_tok_s"],
                    c["tok_s_ratio"],
                    c["hearth_ttft_p50_ms"],
                    c["peer_ttft_p50_ms"],
                    c["ttft_p50_ratio"],
                ]
                for c in report["comparison"]
            ],
        )

    side = report.get("side_by_side") or {}
    if side.get("error"):
        lines += ["", f"Side-by-side rounds failed: {side['error']}"]
    for entry in side.get("by_clients") or []:
        size = entry["clients"]
        lines += ["", f"## Hearth and llama-cpp-python side by side, {size} client(s)", ""]
        lines.append(
            f"Both servers up at once; each round sends {entry['requests_per_round']} requests "
            f"({size} at a time) to one server, then the same requests to the other, the order "
            "alternating. The figures are medians of the per-round ratios."
        )
        lines.append("")
        lines += table(
            ["round", "Hearth tok/s", "peer tok/s", "ratio", "Hearth TTFT p50 ms", "peer", "ratio"],
            [
                [
                    i + 1,
                    r["hearth"]["tok_s"],
                    r["peer"]["tok_s"],
                    r["tok_s_ratio"],
                    r["hearth"]["ttft_p50_ms"],
                    r["peer"]["ttft_p50_ms"],
                    r["ttft_p50_ratio"],
                ]
                for i, r in enumerate(entry["rounds"])
            ]
            + [
                [
                    "median",
                    "",
                    "",
                    entry["tok_s_ratio_median"],
                    "",
                    "",
                    entry["ttft_p50_ratio_median"],
                ]
            ],
        )

    turns = {n: s["multi_turn"] for n, s in servers.items() if s.get("multi_turn")}
    if turns:
        prompt_tokens = next(
            (t["prompt_tokens"] for t in turns.values() if t["prompt_tokens"]), None
        )
        lines += ["", f"## Multi-turn: TTFT of a {fmt(prompt_tokens)}-token chat + 1 message", ""]
        lines += table(
            ["server", "cold TTFT p50 ms", "warm TTFT p50 ms", "warm ÷ cold", "cached", "repeats"],
            [
                [
                    name,
                    t["cold_ttft_p50_ms"],
                    t["warm_ttft_p50_ms"],
                    t["warm_over_cold"],
                    ", ".join(fmt(c) for c in t["warm_cached_tokens"]),
                    t["repeats"],
                ]
                for name, t in turns.items()
            ],
        )

    paired = (servers.get(HEARTH) or {}).get("paired_decode") or {}
    if paired:
        lines += ["", "## 1-client decode against the bare loop, in alternating rounds", ""]
        lines.append(
            "Each round runs the bare loop at batch 1, then one Hearth stream of the same prompt "
            "and length: tok/s from the median step and from the median gap between streamed "
            "chunks. The machine's speed drifts; rounds side by side cancel most of it."
        )
        if paired.get("error"):
            lines += ["", f"Stopped early: {paired['error']}"]
        lines.append("")
        lines += table(
            ["round", "bare loop tok/s", "Hearth tok/s", "ratio"],
            [
                [i + 1, r["ceiling_tok_s_p50"], r["hearth_tok_s_p50"], r["ratio"]]
                for i, r in enumerate(paired.get("rounds") or [])
            ]
            + [["median", "", "", paired.get("ratio_median")]],
        )

    paired_top = (servers.get(HEARTH) or {}).get("paired_aggregate") or {}
    if paired_top:
        size = paired_top["clients"]
        lines += [
            "",
            f"## {size} clients against the bare loop at batch {size}, in alternating rounds",
            "",
        ]
        lines.append(
            f"Each round runs the bare loop at batch {size} (prefill {size} prompts, then decode), "
            f"then {size} concurrent Hearth streams of the same length, with prompts of the same "
            "shape that no earlier round used. Hearth's aggregate is its output tokens over the "
            "streams' wall time; the bare loop's decode-only rate is shown for reference."
        )
        if paired_top.get("error"):
            lines += ["", f"Stopped early: {paired_top['error']}"]
        lines.append("")
        lines += table(
            [
                "round",
                "bare loop prefill + decode tok/s",
                "bare loop decode tok/s",
                "Hearth tok/s",
                "ratio",
            ],
            [
                [
                    i + 1,
                    r["ceiling_e2e_tok_s"],
                    r["ceiling_decode_tok_s"],
                    r["hearth_tok_s"],
                    r["ratio"],
                ]
                for i, r in enumerate(paired_top.get("rounds") or [])
            ]
            + [["median", "", "", "", paired_top.get("ratio_median")]],
        )

    ceiling = report.get("ceiling") or {}
    if ceiling.get("error"):
        lines += ["", f"Ceiling failed: {ceiling['error']}"]
    elif ceiling.get("results"):
        lines += ["", "## Ceiling: bare llama.cpp decode loop, no server", ""]
        lines.append(
            f"Sampler: {ceiling['sampler']}. 'decode' times the decode loop only; 'prefill + "
            "decode' also times the prefill of the same prompts, as a server's aggregate pays "
            "for it. Hearth's figure is end to end (prefill, HTTP, and the clients on the same "
            "cores)."
        )
        lines.append("")
        hearth = servers.get(HEARTH)
        rows = []
        for entry in ceiling["results"]:
            h = find_run(hearth, entry["batch_size"])
            h_tok_s = h["output_tok_s"] if h else None
            e2e = entry.get("e2e_tok_s")
            rows.append(
                [
                    entry["batch_size"],
                    entry["tok_s"],
                    entry.get("tok_s_p50"),
                    e2e,
                    h_tok_s,
                    ratio(h_tok_s, entry["tok_s"]),
                    ratio(h_tok_s, e2e),
                ]
            )
        header = ["batch", "decode tok/s", "median step tok/s", "prefill + decode tok/s"]
        header += ["Hearth tok/s"]
        lines += table([*header, "÷ decode", "÷ prefill + decode"], rows)
    lines += kv_memory.markdown_lines(report.get("kv_memory"))
    spec = report.get("speculation")
    if spec is not None:
        lines += ["", spec["error"] if "error" in spec else speculation.markdown(spec)]
    runner = report.get("runner")
    if runner:
        lines += ["", runner["error"] if "error" in runner else runner_bench.markdown(runner)]
    edits = report.get("speculation_edits")
    if edits is not None:
        lines += ["", edits["error"] if "error" in edits else speculation_edits.markdown(edits)]
    return "\n".join(lines) + "\n"


def kv_memory_process(args: argparse.Namespace) -> dict[str, Any]:
    """bench/kv_memory.py in its own process: its JSON report, or {"error": …}."""
    cmd = [sys.executable, str(BENCH_DIR / "kv_memory.py"), "--json"]
    if args.quick:
        cmd.append("--quick")
    console.print("KV cache types and layouts, and a restart (bench/kv_memory.py)")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": f"kv_memory.py exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args)
    if machine["loadavg_at_start"][0] > 0.5:
        # OpenMP threads spin-wait on each other: a busy neighbour can slow steps by up to 10×.
        console.print(
            f"[yellow]Load average {machine['loadavg_at_start'][0]} at start: another process "
            "is busy, and every figure will be skewed. Rerun on an idle machine.[/yellow]"
        )

    ceiling: dict[str, Any] | None = None
    if args.ceiling_repeats:
        ceiling = run_ceiling(args)
    servers: dict[str, dict[str, Any]] = {}
    for server in args.servers:
        servers[server] = run_server(server, args)
    side: dict[str, Any] | None = None
    if args.peer_rounds and set(args.servers) == set(SERVERS):
        side = run_side_by_side(args)
    kv: dict[str, Any] | None = None
    if not args.no_kv_memory:  # its own servers and processes, after the others stopped
        kv = kv_memory_process(args)
    spec: dict[str, Any] | None = None
    if args.speculation_rounds:
        console.print("Speculative decoding, one stream (bench/speculation.py)")
        try:
            spec = speculation.run_speculation(args.speculation_rounds, args.threads)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            spec = {"error": f"speculation: {type(exc).__name__}: {exc}"}
    edits: dict[str, Any] | None = None
    if args.speculation_rounds:
        console.print("Predicted edits, off, auto and on at 1, 4 and 16 clients")
        try:
            clients = (1, 4) if args.quick else speculation_edits.CLIENTS
            edits = speculation_edits.run_edits(1, clients, args.threads)
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            edits = {"error": f"speculation_edits: {type(exc).__name__}: {exc}"}

    runner: dict[str, Any] | None = None
    if not args.no_runner:
        console.print("Runner processes against the in-process engine, at 1 and 16 clients")
        try:
            runner = runner_bench.run_runner(
                rounds=1 if args.quick else 3,
                ttft_requests=10 if args.quick else 30,
                threads=args.threads,
            )
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            runner = {"error": f"runner: {type(exc).__name__}: {exc}"}

    report = {
        "machine": machine,
        "config": {
            "servers": args.servers,
            "clients": args.clients,
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "hearth_parallel": args.parallel,
            "hearth_ctx_size": args.hearth_ctx_size,
            "peer_ctx_size": args.peer_ctx_size,
            "peer_flash_attn": args.peer_flash_attn,
            "sampling": {**SAMPLING, "eog_logit_bias": EOG_BIAS, "peer_extra": PEER_SAMPLING},
            "multi_turn_repeats": args.multi_turn_repeats,
            "paired_rounds": args.paired_rounds,
            "paired_rounds_top": args.paired_rounds_top,
            "peer_rounds": args.peer_rounds,
            "quick": args.quick,
        },
        "servers": servers,
        "comparison": comparisons(args, servers.get(HEARTH), servers.get(PEER)),
        "side_by_side": side,
        "acceptance": acceptance(args, servers.get(HEARTH), ceiling, side),
        "ceiling": ceiling,
        "kv_memory": kv,
        "speculation": spec,
        "speculation_edits": edits,
        "runner": runner,
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    text = markdown(report)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text, end="")
    console.print(f"Wrote {out} and {out.with_suffix('.md')}")
    failed = any(
        s.get("error")
        or (s.get("paired_decode") or {}).get("error")
        or (s.get("paired_aggregate") or {}).get("error")
        for s in servers.values()
    ) or bool((ceiling or {}).get("error") or (side or {}).get("error"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
