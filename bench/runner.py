"""Runner processes against the in-process engine: does the channel cost speed?

    .venv/bin/python bench/runner.py                    # bench.py runs it too: make bench
    .venv/bin/python bench/runner.py --rounds 3 --ttft-requests 30

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
from pathlib import Path
from typing import Any

from hearth.settings import physical_cores
from speculation import HOST, MODEL_ID, free_port, serve
from sse_client import post_sse

__all__ = ["markdown", "run_runner"]

MODES = ("process", "inline")
CLIENTS = (1, 16)
DECODE_FLOOR = 0.97
TTFT_CEILING = 1.05
TTFT_SLACK_S = 0.002
RESULTS = Path(__file__).parent / "results"


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
    threads = threads or physical_cores()
    report: dict[str, Any] = {
        "rounds": rounds,
        "max_tokens": max_tokens,
        "threads": threads,
        "decode": {},
    }
    with tempfile.TemporaryDirectory(prefix="hearth-runner-bench-") as tmp:
        ports: dict[str, int] = {}
        contexts = []
        try:
            for mode in MODES:
                flags = ["--runner", mode, "--parallel", str(max(clients)), "--ctx-size", "1024"]
                flags += ["--speculation", "off"]
                context = serve(mode, threads, Path(tmp), flags, free_port())
                ports[mode] = context.__enter__()
                contexts.append(context)
            for mode in MODES:  # warm-up: pages, the prompt cache, the first steps
                _decode(ports[mode], max(clients), 16)
            for count in clients:
                speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
                for round_index in range(rounds):
                    order = MODES if round_index % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        speeds[mode].append(_decode(ports[mode], count, max_tokens))
                process = statistics.median(speeds["process"])
                inline = statistics.median(speeds["inline"])
                report["decode"][str(count)] = {
                    "process_tps": round(process, 1),
                    "inline_tps": round(inline, 1),
                    "ratio": round(process / inline, 3),
                    "meets": process / inline >= DECODE_FLOOR,
                }
                print(f"  decode × {count}: {report['decode'][str(count)]}", file=sys.stderr)
            ttft: dict[str, list[float]] = {mode: [] for mode in MODES}
            for index in range(ttft_requests):
                order = MODES if index % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    first, _ = _stream(ports[mode], _body(1, f"lakes {index}"))
                    if first is not None:
                        ttft[mode].append(first)
            process_ms = statistics.median(ttft["process"]) * 1000
            inline_ms = statistics.median(ttft["inline"]) * 1000
            bound = max(inline_ms * TTFT_CEILING, inline_ms + TTFT_SLACK_S * 1000)
            report["ttft"] = {
                "requests": len(ttft["process"]),
                "process_median_ms": round(process_ms, 2),
                "inline_median_ms": round(inline_ms, 2),
                "ratio": round(process_ms / inline_ms, 3),
                "delta_ms": round(process_ms - inline_ms, 2),
                "meets": process_ms <= bound,
            }
            print(f"  ttft: {report['ttft']}", file=sys.stderr)
        finally:
            for context in reversed(contexts):
                context.__exit__(None, None, None)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "### Runner processes against the in-process engine",
        "",
        f"Same flags, side by side, {report['rounds']} alternating rounds, {report['threads']} "
        f"threads, {report['max_tokens']} tokens per stream.",
        "",
        "| clients | process tok/s | inline tok/s | ratio (target >= 0.97) |",
        "|---:|---:|---:|---:|",
    ]
    for count, row in report["decode"].items():
        mark = "" if row["meets"] else " (short)"
        lines.append(
            f"| {count} | {row['process_tps']} | {row['inline_tps']} | {row['ratio']}{mark} |"
        )
    ttft = report.get("ttft")
    if ttft:
        mark = "meets" if ttft["meets"] else "short of"
        lines += [
            "",
            f"Median time to first token over {ttft['requests']} requests each: process "
            f"{ttft['process_median_ms']} ms, inline {ttft['inline_median_ms']} ms "
            f"({ttft['ratio']}x, {ttft['delta_ms']:+} ms; {mark} <= 1.05x or + 2 ms).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    report = run_runner(args.rounds, args.ttft_requests, args.max_tokens, args.threads)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runner.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "runner.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
