"""Speculative decoding's benchmark: one stream's decode speed with and without speculation.

    .venv/bin/python bench/speculation.py             # alone (bench.py runs it too: make bench)
    .venv/bin/python bench/speculation.py --rounds 1

Two Hearth servers with one slot each and flash attention off (the setting of the identity
tests; these longer greedy answers still differ, see docs/speculation.md), one with
--speculation off and one with --speculation auto, take the same requests in alternating
order, round after round (the machine's speed drifts more than some of the gaps):
(a) an edit: a ~300-token function with one variable renamed, at temperature 0, with and without
    the function as `prediction` (OpenAI's Predicted Outputs; without it, prompt lookup), and
    with the off server's own answer as the prediction (`edit_echo`: what the machinery reaches
    when nearly every draft token is kept, on this machine's step costs);
(b) a RAG-style answer that quotes its source, at temperature 0 (prompt lookup);
(c) free story writing, seeded at temperature 0.7 (where speculation must cost nothing).
Decode tok/s is (completion tokens - 1) / (last content event - first content event): prefill
is the same on both and left out. The ratio is the median over rounds of each round's ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hearth.settings import physical_cores
from sse_client import post_sse

__all__ = ["TARGETS", "markdown", "run_speculation"]

HOST = "127.0.0.1"
MODEL_ID = "smollm2:135m"
READY_TIMEOUT_S = 180.0

FUNCTION = '''def summarize_orders(orders, tax_rate=0.2, discount_threshold=100.0):
    """Totals per customer, with tax, and a discount on large orders."""
    totals = {}
    for order in orders:
        customer = order["customer"]
        subtotal = 0.0
        for item in order["items"]:
            price = item["price"] * item["quantity"]
            if item.get("taxable", True):
                price = price * (1 + tax_rate)
            subtotal += price
        if subtotal > discount_threshold:
            subtotal = subtotal * 0.95
        totals[customer] = totals.get(customer, 0.0) + subtotal
    report = []
    for customer, amount in sorted(totals.items()):
        line = f"{customer}: {amount:.2f}"
        if amount > discount_threshold * 10:
            line = line + " (key account)"
        report.append(line)
    grand_total = sum(totals.values())
    report.append(f"Total: {grand_total:.2f}")
    return "\\n".join(report)
'''

SOURCE = (
    "Document 1 (harbour history): The harbour was dredged in 1872, when the railway reached "
    "the town. Fishing boats moved to the north quay, and the south quay became a coal wharf.\n"
    "Document 2 (lighthouse): The lighthouse on the headland was first lit on 3 March 1881. "
    "Its lamp burned paraffin until 1923, when it was converted to electricity, and its beam "
    "could be seen twenty-two nautical miles out to sea. The last keeper, Margaret Ellis, left "
    "in 1989, when the light was automated and the keepers' cottages were sold to the town.\n"
    "Document 3 (market): The Thursday market has been held in the square since 1605, except "
    "for two years during the plague, and it still sells fish, cheese and wool.\n"
)

TASKS: dict[str, dict[str, Any]] = {
    "edit": {
        "messages": [
            {
                "role": "user",
                "content": "Rewrite this function, renaming the variable `subtotal` to "
                "`order_total`. Reply with the whole function and nothing else.\n\n"
                f"```python\n{FUNCTION}```",
            }
        ],
        "temperature": 0.0,
        "max_tokens": 400,
    },
    "rag": {
        "messages": [
            {"role": "system", "content": "Answer from the documents, quoting them exactly."},
            {
                "role": "user",
                "content": f"{SOURCE}\nQuote, word for word, everything Document 2 says about "
                "the lighthouse.",
            },
        ],
        "temperature": 0.0,
        "max_tokens": 200,
    },
    "story": {
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "temperature": 0.7,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 7,
        "max_tokens": 256,
        # The end-of-generation tokens banned: every run writes max_tokens tokens.
        "logit_bias": {"0": -100, "2": -100, "4": -100},
    },
}
# (case, task, prediction: "" none, "function" the original code, "echo" the off server's answer)
CASES = (
    ("edit_prediction", "edit", "function"),
    ("edit_echo", "edit", "echo"),
    ("edit_lookup", "edit", ""),
    ("rag_lookup", "rag", ""),
    ("story", "story", ""),
)
# The targets: speedups at least (a) and (b), and no slower than this (c).
TARGETS = {"edit_prediction": 2.0, "rag_lookup": 1.5, "story": 0.97}


@dataclass
class Sample:
    decode_tps: float
    completion_tokens: int
    text: str
    accepted: int
    rejected: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def hearth(
    speculation: str, threads: int, log_dir: Path, quantize: str, parallel: int = 1
) -> Iterator[int]:
    flags = ["--parallel", str(parallel), "--ctx-size", "2048", "--flash-attn", "off"]
    flags += ["--speculation", speculation, "--quantize", quantize]
    with serve(speculation, threads, log_dir, flags, free_port()) as port:
        yield port


@contextlib.contextmanager
def serve(
    name: str,
    threads: int,
    log_dir: Path,
    flags: list[str],
    port: int,
    source: Path | None = None,
) -> Iterator[int]:
    """`hearth serve` with `flags` on `port`, its own Hearth home and log named `name`, until
    the block ends; yields once /health answers. `source`: another checkout whose `src` is
    served (an A/B run against an older commit), with this venv's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    env["HEARTH_HOME"] = str(log_dir / f"home-{name}")
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")
    cmd = [sys.executable, "-m", "hearth", "serve", "--host", HOST, "--port", str(port)]
    cmd += ["--threads", str(threads), *flags]
    with (log_dir / f"hearth-{name}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hearth serve ({name}) exited")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("hearth serve was not ready in time")
            time.sleep(0.25)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_body(task: str, prediction: str) -> dict[str, Any]:
    spec = TASKS[task]
    body = {"model": MODEL_ID, "stream": True, "stream_options": {"include_usage": True}, **spec}
    if prediction:
        body["prediction"] = {"type": "content", "content": prediction}
    return body


def measure(port: int, task: str, prediction: str) -> Sample:
    _, response = post_sse(HOST, port, "/v1/chat/completions", request_body(task, prediction))
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.body[:300]!r}")
    times: list[float] = []
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    for event in response.events:
        if event.data == b"[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                times.append(event.at)
                pieces.append(content)
    tokens = int(usage["completion_tokens"])
    details = usage.get("completion_tokens_details") or {}
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return Sample(
        decode_tps=(tokens - 1) / span if span > 0 else 0.0,
        completion_tokens=tokens,
        text="".join(pieces),
        accepted=int(details.get("accepted_prediction_tokens", 0)),
        rejected=int(details.get("rejected_prediction_tokens", 0)),
    )


def run_speculation(
    rounds: int = 3, threads: int | None = None, quantize: str = "none", cases: str = ""
) -> dict[str, Any]:
    """Every case (or those named, comma-separated), `rounds` times on each server in
    alternating order; a JSON-ready report."""
    threads = threads or physical_cores()
    results: dict[str, Any] = {"rounds": rounds, "quantize": quantize, "cases": {}}
    chosen = [c for c in CASES if not cases or c[0] in cases.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="hearth-spec-bench-") as tmp,
        hearth("off", threads, Path(tmp), quantize) as off_port,
        hearth("auto", threads, Path(tmp), quantize) as auto_port,
    ):
        for case, task, predicted in chosen:
            prediction = f"```python\n{FUNCTION}```" if predicted == "function" else ""
            # warm-up: the prompt's cache, the pages (and the answer an echo predicts)
            answer = measure(off_port, task, prediction).text
            if predicted == "echo":
                prediction = answer
            measure(auto_port, task, prediction)
            pairs: list[tuple[Sample, Sample]] = []
            drafted = kept = 0  # draft tokens the auto server decoded, and kept, over the rounds
            for round_index in range(rounds):
                order = [(off_port, 0), (auto_port, 1)]
                if round_index % 2:
                    order.reverse()
                pair: list[Sample | None] = [None, None]
                for port, slot in order:
                    before = drafts(auto_port)
                    pair[slot] = measure(port, task, prediction)
                    if port == auto_port:
                        after = drafts(auto_port)
                        drafted += after[0] - before[0]
                        kept += after[1] - before[1]
                off, auto = pair
                assert off is not None and auto is not None
                pairs.append((off, auto))
            ratios = [auto.decode_tps / off.decode_tps for off, auto in pairs if off.decode_tps]
            auto_last = pairs[-1][1]
            results["cases"][case] = {
                "off_tps": statistics.median(off.decode_tps for off, _ in pairs),
                "auto_tps": statistics.median(auto.decode_tps for _, auto in pairs),
                "ratio": statistics.median(ratios) if ratios else None,
                "ratios": ratios,
                "completion_tokens": auto_last.completion_tokens,
                "identical_output": all(off.text == auto.text for off, auto in pairs),
                "draft_tokens": drafted // rounds,
                "draft_tokens_kept": kept // rounds,
                "accepted_prediction_tokens": auto_last.accepted,
                "rejected_prediction_tokens": auto_last.rejected,
                "target": TARGETS.get(case),
            }
            row = results["cases"][case]
            print(
                f"  {case}: {row['ratio']:.2f}×, {row['off_tps']:.1f} → {row['auto_tps']:.1f}",
                file=sys.stderr,
                flush=True,
            )
        engine = httpx.get(f"http://{HOST}:{auto_port}/health", timeout=30).json()["engine"]
        results["step_ms_by_rows"] = engine["step_ms_by_rows"]
    return results


def drafts(port: int) -> tuple[int, int]:
    """The server's draft tokens decoded and kept so far."""
    engine = httpx.get(f"http://{HOST}:{port}/health", timeout=30).json()["engine"]
    return int(engine["draft_tokens_total"]), int(engine["draft_tokens_accepted_total"])


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## Speculative decoding (one stream, flash attention off, --quantize "
        f"{report.get('quantize', 'none')})",
        "",
        "| case | off tok/s | auto tok/s | ratio | target | same output | tokens | "
        "draft tokens decoded / kept | prediction accepted / rejected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, row in report["cases"].items():
        target = row["target"]
        ratio = row["ratio"]
        met = "" if target is None or ratio is None else (" ✓" if ratio >= target else " ✗")
        lines.append(
            f"| {case} | {row['off_tps']:.1f} | {row['auto_tps']:.1f} | "
            f"{ratio:.2f}×{met} | {'' if target is None else f'≥ {target}×'} | "
            f"{'yes' if row['identical_output'] else 'NO'} | {row['completion_tokens']} | "
            f"{row.get('draft_tokens', '')} / {row.get('draft_tokens_kept', '')} | "
            f"{row['accepted_prediction_tokens']} / {row['rejected_prediction_tokens']} |"
        )
    lines.append(f"\nMedian of {report['rounds']} paired rounds (see bench/speculation.py).")
    costs = report.get("step_ms_by_rows") or {}
    shown = ", ".join(
        f"{n} row{'' if n == '1' else 's'} {costs[n]:.1f} ms"
        for n in ("1", "2", "4", "8", "16", "33")
        if n in costs
    )
    if shown:
        lines.append(
            f"Decode steps on the auto server at the end (its own moving averages, `/health`'s "
            f"`engine.step_ms_by_rows`): {shown}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per case (3)")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (physical cores)")
    parser.add_argument(
        "--quantize", choices=("none", "q8_0", "q4_0"), default="none", help="both servers'"
    )
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = run_speculation(args.rounds, args.threads, args.quantize, args.cases)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
