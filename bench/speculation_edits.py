"""Predicted edits: does drafting pay, whatever the edit, at 1, 4 and 16 clients?

    .venv/bin/python bench/speculation_edits.py            # bench.py runs it too: make bench
    .venv/bin/python bench/speculation_edits.py --clients 1 --rounds 1

These cases measure drafting, not the model's obedience: each prediction is derived from the
off server's own greedy answer A to an edit request (bench/speculation.py's function), so the
output is known and only the prediction differs from it:
- `fence`: A with a code fence added around it (drafts must skip the fence's line);
- `tenth_line`: A with every tenth line changed (drafts must re-align after each);
- `rename`: A with its most frequent name renamed throughout (drafts resume after each).
Three servers, `--speculation off`, `auto` and `on` (one slot per client, flash attention off,
the same `--repack`), take the same requests side by side, in alternating order per round. The
figure is aggregate output tok/s: every client's completion tokens over the wall time of the
batch (the prompt is cached after a warm-up, so this is decode). Ratios are to `off`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from hearth.settings import physical_cores
from speculation import FUNCTION, HOST, MODEL_ID, hearth
from sse_client import post_sse

__all__ = ["markdown", "predictions", "run_edits"]

CLIENTS = (1, 4, 16)
MODES = ("off", "auto", "on")
MAX_TOKENS = 300
# The targets at 1 client; auto must never fall below 0.97× of off anywhere.
TARGETS_AT_ONE = {"fence": 1.5, "tenth_line": 1.3}
AUTO_FLOOR = 0.97
PROMPT = (
    "Rewrite this function, renaming the variable `subtotal` to `order_total`. Reply with the "
    f"whole function and nothing else.\n\n```python\n{FUNCTION}```"
)


def predictions(answer: str) -> dict[str, str]:
    """The three predictions derived from the answer A."""
    lines = answer.split("\n")
    tenth = [
        f"{line} # changed" if i % 10 == 9 and line.strip() else line
        for i, line in enumerate(lines)
    ]
    names = Counter(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b", answer))
    name = names.most_common(1)[0][0] if names else "total"
    return {
        "fence": f"```\n{answer}\n```\n",
        "tenth_line": "\n".join(tenth),
        "rename": re.sub(rf"\b{re.escape(name)}\b", f"{name}_renamed", answer),
    }


def _body(prediction: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.0,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if prediction:
        body["prediction"] = {"type": "content", "content": prediction}
    return body


def _one(port: int, body: dict[str, Any]) -> tuple[str, int]:
    _, response = post_sse(HOST, port, "/v1/chat/completions", body)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.body[:300]!r}")
    text, tokens = [], 0
    for event in response.events:
        if event.data == b"[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk.get("usage"):
            tokens = int(chunk["usage"]["completion_tokens"])
        for choice in chunk.get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text), tokens


def _batch(port: int, body: dict[str, Any], clients: int) -> tuple[float, str]:
    """Aggregate output tok/s of `clients` identical requests at once, and one answer."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: _one(port, body), range(clients)))
    elapsed = time.perf_counter() - started
    return sum(tokens for _, tokens in results) / elapsed, results[0][0]


def run_edits(
    rounds: int = 1, clients: tuple[int, ...] = CLIENTS, threads: int | None = None
) -> dict[str, Any]:
    threads = threads or physical_cores()
    slots = max(clients)
    report: dict[str, Any] = {"rounds": rounds, "clients": list(clients), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="hearth-edit-bench-") as tmp:
        servers: dict[str, int] = {}
        stack = []
        try:
            for mode in MODES:
                context = hearth(mode, threads, Path(tmp), "none", parallel=slots)
                servers[mode] = context.__enter__()
                stack.append(context)
            health = httpx.get(f"http://{HOST}:{servers['off']}/health", timeout=30).json()
            report["repack"] = (health["models"][0].get("weights") or {}).get("repack")
            answer, _ = _one(servers["off"], _body(""))
            report["answer_chars"] = len(answer)
            for case, prediction in predictions(answer).items():
                body = _body(prediction)
                for mode in MODES:  # warm-up: every server's prompt cache and pages
                    _one(servers[mode], body)
                rows: dict[str, Any] = {}
                for count in clients:
                    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
                    same = True
                    for round_index in range(rounds):
                        order = MODES if round_index % 2 == 0 else tuple(reversed(MODES))
                        texts = {}
                        for mode in order:
                            speed, texts[mode] = _batch(servers[mode], body, count)
                            speeds[mode].append(speed)
                        same = same and texts["auto"] == texts["off"] == texts["on"]
                    off = statistics.median(speeds["off"])
                    rows[str(count)] = {
                        "off_tps": round(off, 1),
                        "auto_tps": round(statistics.median(speeds["auto"]), 1),
                        "on_tps": round(statistics.median(speeds["on"]), 1),
                        "auto_ratio": round(statistics.median(speeds["auto"]) / off, 2),
                        "on_ratio": round(statistics.median(speeds["on"]) / off, 2),
                        "same_output": same,
                    }
                    print(f"  {case} × {count}: {rows[str(count)]}", file=sys.stderr, flush=True)
                report["cases"][case] = rows
        finally:
            for context in reversed(stack):
                context.__exit__(None, None, None)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## Predicted edits (derived from the off server's own answer; --repack "
        f"{report.get('repack')}, flash attention off, aggregate output tok/s)",
        "",
        "| case | clients | off tok/s | auto tok/s | on tok/s | auto ÷ off | on ÷ off | "
        "target | same output |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case, rows in report["cases"].items():
        for count, row in rows.items():
            target = TARGETS_AT_ONE.get(case) if count == "1" else None
            floor = max(target or 0.0, AUTO_FLOOR)
            met = "✓" if row["auto_ratio"] >= floor else "✗"
            lines.append(
                f"| {case} | {count} | {row['off_tps']} | {row['auto_tps']} | {row['on_tps']} | "
                f"{row['auto_ratio']}× {met} | {row['on_ratio']}× | ≥ {floor}× | "
                f"{'yes' if row['same_output'] else 'NO'} |"
            )
    lines.append(f"\nMedian of {report['rounds']} round(s) per cell (bench/speculation_edits.py).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    counts = tuple(int(c) for c in args.clients.split(","))
    report = run_edits(args.rounds, counts, args.threads)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
