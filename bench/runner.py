"""Runner processes against the in-process engine: does the channel cost speed?

    .venv/bin/python bench/runner.py                    # bench.py runs it too: make bench
    .venv/bin/python bench/runner.py --rounds 3 --ttft-requests 30
    .venv/bin/python bench/runner.py --against ../old   # this checkout against an older one

Two servers side by side, `--runner process` (each model in a runner process, the default) and
`--runner inline` (the engine in the server's own process), with the same flags (16 slots,
speculation off so both decode the same rows). In alternating order per round:
- decode: aggregate output tok/s of N streams of --max-tokens tokens each (end-of-generation
  ignored), at 1 and 16 clients;
- time to first token: --ttft-requests short requests to each, one at a time, interleaved.
Ratios are process / inline (decode: higher is better; TTFT: lower is better). The issue's
targets: decode >= 0.97x at 1 and 16 clients; median TTFT <= 1.05x or + 2 ms.
Writes bench/results/runner.json and runner.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.settings import physical_cores
from speculation import HOST, MODEL_ID, free_port, serve
from sse_client import post_sse

__all__ = ["markdown", "run_runner"]

MODES = ("process", "inline")


@dataclass(frozen=True)
class Side:
    """One of the two servers compared: its name, its flags, and the checkout it runs from."""

    name: str
    flags: tuple[str, ...] = ()
    source: Path | None = None


CLIENTS = (1, 16)
DECODE_FLOOR = 0.97
TTFT_CEILING = 1.05
TTFT_SLACK_S = 0.002
RESULTS = Path(__file__).parent / "results"
RUNNER_TITLE = "Runner processes against the in-process engine"


def _stream(port: int, body: dict[str, Any]) -> tuple[float | None, int]:
    """Seconds to the first content token, and the completion tokens."""
    sent, response = post_sse(HOST, port, "/v1/chat/completions", body)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.body[:300]!r}")
    first: float | None = None
    tokens = 0
    for event in response.events:
        if event.data == b"[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk.get("usage"):
            tokens = int(chunk["usage"]["completion_tokens"])
        for choice in chunk.get("choices") or []:
            if first is None and (choice.get("delta") or {}).get("content"):
                first = event.at - sent
    return first, tokens


def _body(max_tokens: int, words: str) -> dict[str, Any]:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"Tell me about {words}."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _decode(port: int, clients: int, max_tokens: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(
            pool.map(lambda i: _stream(port, _body(max_tokens, f"rivers {i}")), range(clients))
        )
    return sum(tokens for _, tokens in results) / (time.perf_counter() - started)


def run_runner(
    rounds: int = 3,
    ttft_requests: int = 30,
    max_tokens: int = 128,
    threads: int | None = None,
    clients: tuple[int, ...] = CLIENTS,
) -> dict[str, Any]:
    """Runner processes (the default) against the in-process engine."""
    return run_pair(
        Side("process", ("--runner", "process")),
        Side("inline", ("--runner", "inline")),
        rounds,
        ttft_requests,
        max_tokens,
        threads,
        clients,
    )


def run_pair(
    a: Side,
    b: Side,
    rounds: int = 3,
    ttft_requests: int = 30,
    max_tokens: int = 128,
    threads: int | None = None,
    clients: tuple[int, ...] = CLIENTS,
) -> dict[str, Any]:
    """Decode tok/s at each client count and median TTFT, `a` against `b`, in alternating
    order; ratios are a / b."""
    threads = threads or physical_cores()
    names = (a.name, b.name)
    report: dict[str, Any] = {
        "a": a.name,
        "b": b.name,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "threads": threads,
        "decode": {},
    }
    with tempfile.TemporaryDirectory(prefix="hearth-pair-bench-") as tmp:
        ports: dict[str, int] = {}
        contexts = []
        try:
            for side in (a, b):
                flags = ["--parallel", str(max(clients)), "--ctx-size", "1024"]
                flags += ["--speculation", "off", *side.flags]
                context = serve(side.name, threads, Path(tmp), flags, free_port(), side.source)
                ports[side.name] = context.__enter__()
                contexts.append(context)
            for name in names:  # warm-up: pages, the prompt cache, the first steps
                _decode(ports[name], max(clients), 16)
            for count in clients:
                speeds: dict[str, list[float]] = {name: [] for name in names}
                for round_index in range(rounds):
                    order = names if round_index % 2 == 0 else tuple(reversed(names))
                    for name in order:
                        speeds[name].append(_decode(ports[name], count, max_tokens))
                first = statistics.median(speeds[a.name])
                second = statistics.median(speeds[b.name])
                report["decode"][str(count)] = {
                    "a_tps": round(first, 1),
                    "b_tps": round(second, 1),
                    "ratio": round(first / second, 3),
                    "meets": first / second >= DECODE_FLOOR,
                }
                print(f"  decode × {count}: {report['decode'][str(count)]}", file=sys.stderr)
            ttft: dict[str, list[float]] = {name: [] for name in names}
            for index in range(ttft_requests):
                order = names if index % 2 == 0 else tuple(reversed(names))
                for name in order:
                    seconds, _ = _stream(ports[name], _body(1, f"lakes {index}"))
                    if seconds is not None:
                        ttft[name].append(seconds)
            first_ms = statistics.median(ttft[a.name]) * 1000
            second_ms = statistics.median(ttft[b.name]) * 1000
            bound = max(second_ms * TTFT_CEILING, second_ms + TTFT_SLACK_S * 1000)
            report["ttft"] = {
                "requests": len(ttft[a.name]),
                "a_median_ms": round(first_ms, 2),
                "b_median_ms": round(second_ms, 2),
                "ratio": round(first_ms / second_ms, 3),
                "delta_ms": round(first_ms - second_ms, 2),
                "meets": first_ms <= bound,
            }
            print(f"  ttft: {report['ttft']}", file=sys.stderr)
        finally:
            for context in reversed(contexts):
                context.__exit__(None, None, None)
    return report


def markdown(report: dict[str, Any], title: str = RUNNER_TITLE) -> str:
    a, b = report["a"], report["b"]
    lines = [
        f"### {title}",
        "",
        f"Same flags, side by side, {report['rounds']} alternating rounds, {report['threads']} "
        f"threads, {report['max_tokens']} tokens per stream.",
        "",
        f"| clients | {a} tok/s | {b} tok/s | ratio (target >= {DECODE_FLOOR}) |",
        "|---:|---:|---:|---:|",
    ]
    for count, row in report["decode"].items():
        mark = "" if row["meets"] else " (short)"
        lines.append(f"| {count} | {row['a_tps']} | {row['b_tps']} | {row['ratio']}{mark} |")
    ttft = report.get("ttft")
    if ttft:
        mark = "meets" if ttft["meets"] else "short of"
        lines += [
            "",
            f"Median time to first token over {ttft['requests']} requests each: {a} "
            f"{ttft['a_median_ms']} ms, {b} {ttft['b_median_ms']} ms "
            f"({ttft['ratio']}x, {ttft['delta_ms']:+} ms; {mark} <= 1.05x or + 2 ms).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--against",
        type=Path,
        nargs="+",
        metavar="CHECKOUT",
        help="instead: this checkout's server against another checkout's (an older commit's "
        "worktree), or the first of two checkouts against the second; default flags",
    )
    args = parser.parse_args(argv)
    if args.against is not None:
        *first, other = args.against
        here = Side(first[0].name, source=first[0].resolve()) if first else Side("this")
        there = Side(other.name, source=other.resolve())
        report = run_pair(here, there, args.rounds, args.ttft_requests, args.max_tokens,
                          args.threads)  # fmt: skip
        title, stem = f"{here.name} against {there.name}", "against"
    else:
        report = run_runner(args.rounds, args.ttft_requests, args.max_tokens, args.threads)
        title, stem = RUNNER_TITLE, "runner"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, title)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
