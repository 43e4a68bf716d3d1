"""Memory per slot and the prompt cache on disk: KV cache types and layouts, and a restart.

    .venv/bin/python bench/kv_memory.py            # everything (bench.py runs it with --json)
    .venv/bin/python bench/kv_memory.py --quick    # fewer decode steps, shorter conversation

1. Layouts and types. For each KV configuration (split or unified, f16 / q8_0 / q4_0), in a
   process of its own: Hearth's LlamaRunner with 16 slots × 2048 tokens, the KV buffer's size
   as llama.cpp reports it, the process's RSS, and the decode speed of the real runner at 1 and
   16 sequences (greedy, the median step after a prefill of 64 tokens per sequence). A unified
   pool a quarter the size shows what sharing one pool buys: 16 slots whose conversations
   together fit 8192 tokens, each able to grow to all of them.
2. A restart. A ~1,500-token chat on `hearth serve --parallel 1`: the first turn, a graceful
   stop, a new server on the same home, and the next turn (restored from disk); then the same
   turn on a server with `--prompt-cache-disk 0` (decoded from scratch, the cold start).
   TTFT of each, and cached_tokens of the restored one.
3. Each server's idle RSS with 16 slots × 2048 tokens, per cache type: what a background
   server holds while nobody uses it.
4. What each cache type costs in quality: `bench/quality.py --cache-types` (top-1 agreement
   with an f16 cache, and f16 with flash attention off as the noise floor).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import llama_cpp as llama

BENCH_DIR = Path(__file__).resolve().parent
SLOTS = 16
CTX_PER_SLOT = 2048
PREFILL_TOKENS = 64

# (name, type_k, type_v, unified, total KV cells or None for SLOTS × CTX_PER_SLOT)
CONFIGS: list[tuple[str, str, str, bool, int | None]] = [
    ("split f16", "f16", "f16", False, None),
    ("unified f16", "f16", "f16", True, None),
    ("unified f16, ¼ pool", "f16", "f16", True, SLOTS * CTX_PER_SLOT // 4),
    ("split q8_0", "q8_0", "q8_0", False, None),
    ("split q4_0", "q4_0", "q4_0", False, None),
]
SERVER_TYPES = [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]

_kv_log: list[str] = []


@llama.llama_log_callback  # type: ignore[untyped-decorator]
def _capture(level: int, text: bytes, _user_data: Any) -> None:
    # Module-level, so ctypes keeps it alive: keeps llama.cpp's lines naming the KV buffer.
    line = text.decode("utf-8", "replace") if text else ""
    if "KV buffer size" in line:
        _kv_log.append(line)
    elif level == 4 and line:
        sys.stderr.write(line)


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# -- 1. one KV configuration, in its own process ------------------------------------------------


def probe(config: dict[str, Any]) -> dict[str, Any]:
    from hearth.engine.llama_runner import LlamaRunner, RunnerConfig, init_backend
    from hearth.engine.scheduler import Chunk
    from hearth.engine.types import SamplingParams
    from hearth.models.registry import embedded_model_path
    from hearth.settings import physical_cores

    init_backend()
    llama.llama_log_set(_capture, ctypes.c_void_p(0))
    cells = config["cells"] or SLOTS * CTX_PER_SLOT
    runner = LlamaRunner(
        RunnerConfig(
            model_path=embedded_model_path(),
            n_slots=SLOTS,
            n_ctx_per_slot=cells // SLOTS,
            n_threads=physical_cores(),
            n_batch=512,
            type_k=config["type_k"],
            type_v=config["type_v"],
            kv_unified=config["unified"],
        )
    )
    kv_mib = sum(float(line.split("=")[1].split()[0]) for line in _kv_log)
    prompt = runner.tokenize(
        "Tell me a long story about a lighthouse keeper and the storms of one winter. " * 8,
        add_special=False,
        parse_special=False,
    )[:PREFILL_TOKENS]
    speed = {}
    for batch in (1, SLOTS):
        for seq in range(SLOTS):
            runner.kv_trim(seq, 0)
        for seq in range(batch):  # one prompt per step, as a server admits them
            if runner.decode([Chunk(None, seq, 0, prompt, True)]) != 0:  # type: ignore[arg-type]
                raise RuntimeError("prefill failed")
        samplers = [runner.new_sampler(SamplingParams(max_tokens=1, temperature=0))]
        tokens = [runner.sample(samplers[0], len(prompt) - 1)] * batch
        steps = []
        for step in range(config["steps"]):
            chunks = [
                Chunk(None, seq, PREFILL_TOKENS + step, (tokens[seq],), True)  # type: ignore[arg-type]
                for seq in range(batch)
            ]
            started = time.perf_counter()
            if runner.decode(chunks) != 0:
                raise RuntimeError("decode failed")
            tokens = [runner.sample(samplers[0], row) for row in range(batch)]
            steps.append(time.perf_counter() - started)
        runner.free_sampler(samplers[0])
        median = statistics.median(steps[2:])  # the first steps warm caches
        speed[str(batch)] = round(batch / median, 1)
    report = {
        **config,
        "kv_mib": round(kv_mib, 1),
        "rss_mib": rss_mib(),
        "decode_tok_s": speed,
    }
    runner.close()
    return report


def race(rounds: int, steps: int) -> dict[str, Any]:
    """Split against unified KV in one process, in alternating rounds (the machine's speed
    drifts more than the gap): decode tok/s of each at 1 and 16 sequences, and the ratios."""
    from hearth.engine.llama_runner import LlamaRunner, RunnerConfig, init_backend
    from hearth.engine.scheduler import Chunk
    from hearth.engine.types import SamplingParams
    from hearth.models.registry import embedded_model_path
    from hearth.settings import physical_cores

    init_backend()
    runners = {
        name: LlamaRunner(
            RunnerConfig(
                model_path=embedded_model_path(),
                n_slots=SLOTS,
                n_ctx_per_slot=CTX_PER_SLOT,
                n_threads=physical_cores(),
                n_batch=512,
                kv_unified=unified,
            )
        )
        for name, unified in (("split", False), ("unified", True))
    }
    prompt = runners["split"].tokenize(
        "Tell me a long story about a lighthouse keeper and the storms of one winter. " * 8,
        add_special=False,
        parse_special=False,
    )[:PREFILL_TOKENS]
    sampler = runners["split"].new_sampler(SamplingParams(max_tokens=1, temperature=0))
    positions = {name: [PREFILL_TOKENS] * SLOTS for name in runners}  # each sequence's next
    for runner in runners.values():
        for seq in range(SLOTS):
            if runner.decode([Chunk(None, seq, 0, prompt, True)]) != 0:  # type: ignore[arg-type]
                raise RuntimeError("prefill failed")
    speeds: dict[str, dict[int, list[float]]] = {n: {1: [], SLOTS: []} for n in runners}
    for _ in range(rounds):
        for batch in (1, SLOTS):
            for name, runner in runners.items():
                token, times = 42, []
                for _ in range(steps):
                    chunks = [
                        Chunk(None, seq, positions[name][seq], (token,), True)  # type: ignore[arg-type]
                        for seq in range(batch)
                    ]
                    started = time.perf_counter()
                    if runner.decode(chunks) != 0:
                        raise RuntimeError("decode failed")
                    token = runner.sample(sampler, 0)
                    times.append(time.perf_counter() - started)
                    for seq in range(batch):
                        positions[name][seq] += 1
                speeds[name][batch].append(batch / statistics.median(times))
    report: dict[str, Any] = {"rounds": rounds, "steps": steps}
    for batch in (1, SLOTS):
        split, unified = speeds["split"][batch], speeds["unified"][batch]
        report[f"split_tok_s_{batch}"] = round(statistics.median(split), 1)
        report[f"unified_tok_s_{batch}"] = round(statistics.median(unified), 1)
        report[f"unified_over_split_{batch}"] = round(
            statistics.median(u / s for u, s in zip(unified, split, strict=True)), 3
        )
    runners["split"].free_sampler(sampler)
    for runner in runners.values():
        runner.close()
    return report


def run_race(rounds: int, steps: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--race", f"{rounds},{steps}"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-400:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_configs(steps: int) -> list[dict[str, Any]]:
    results = []
    for name, type_k, type_v, unified, cells in CONFIGS:
        config = {
            "name": name,
            "type_k": type_k,
            "type_v": type_v,
            "unified": unified,
            "cells": cells,
            "steps": steps,
        }
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            results.append({**config, "error": done.stderr.strip()[-400:]})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


# -- 2 and 3. real servers ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, home: Path, *flags: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        env["HEARTH_HOME"] = str(home)
        self.log = home / f"serve-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hearth", "serve", "--port", str(self.port), *flags],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hearth serve exited: {self.log.read_text()[-800:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("hearth serve was not ready in 180 s")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def turn(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """A greedy streamed turn: its text, TTFT and usage."""
        body = {
            "model": "smollm2:135m",
            "messages": messages,
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        ttft = None
        text, usage = "", {}
        with httpx.stream(
            "POST", f"{self.base}/v1/chat/completions", json=body, timeout=600
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    text += choice["delta"].get("content") or ""
        details = usage.get("prompt_tokens_details") or {}
        return {
            "text": text,
            "ttft_ms": round((ttft or 0) * 1000, 1),
            "prompt_tokens": usage.get("prompt_tokens"),
            "cached_tokens": details.get("cached_tokens") or 0,
        }


def conversation(exchanges: int) -> list[dict[str, str]]:
    topics = ["lighthouses", "sourdough bread", "arctic terns", "copper roofs", "pendulum clocks"]
    messages = [{"role": "system", "content": "You are a patient teacher who answers briefly."}]
    for i in range(exchanges):
        topic = topics[i % len(topics)]
        messages += [
            {"role": "user", "content": f"Question {i + 1}: tell me about {topic}. " * 6},
            {
                "role": "assistant",
                "content": f"Answer {i + 1}: {topic} have a long story; people observed them, "
                "wrote notes, argued about causes and slowly agreed. " * 3,
            },
        ]
    return [*messages, {"role": "user", "content": "Which of these is the oldest?"}]


def run_restart(exchanges: int) -> dict[str, Any]:
    flags = ("--parallel", "1", "--ctx-size", "4096")
    with tempfile.TemporaryDirectory(prefix="hearth-kv-bench-") as tmp:
        home = Path(tmp)
        first = conversation(exchanges)
        server = Server(home, *flags)
        try:
            turn1 = server.turn(first)
        finally:
            server.stop()
        second = [
            *first,
            {"role": "assistant", "content": turn1["text"]},
            {"role": "user", "content": "And which is the youngest?"},
        ]
        server = Server(home, *flags)
        try:
            restored = server.turn(second)
        finally:
            server.stop()
        server = Server(home, *flags, "--prompt-cache-disk", "0")
        try:
            cold = server.turn(second)
        finally:
            server.stop()
        saved = sum(p.stat().st_size for p in (home / "prompt-cache").glob("*/*.kv"))
    return {
        "first_turn_prompt_tokens": turn1["prompt_tokens"],
        "prompt_tokens": restored["prompt_tokens"],
        "restored_cached_tokens": restored["cached_tokens"],
        "restored_ttft_ms": restored["ttft_ms"],
        "cold_ttft_ms": cold["ttft_ms"],
        "restored_over_cold": round(restored["ttft_ms"] / cold["ttft_ms"], 3)
        if cold["ttft_ms"]
        else None,
        "same_answer": restored["text"] == cold["text"],
        "saved_mib": round(saved / 2**20, 1),
    }


def run_idle_rss() -> list[dict[str, Any]]:
    results = []
    for type_k, type_v in SERVER_TYPES:
        with tempfile.TemporaryDirectory(prefix="hearth-kv-bench-") as tmp:
            flags = ["--parallel", str(SLOTS), "--ctx-size", str(CTX_PER_SLOT)]
            flags += ["--cache-type-k", type_k, "--cache-type-v", type_v]
            server = Server(Path(tmp), *flags)
            try:
                time.sleep(1.0)
                rss = rss_mib(server.proc.pid)
            finally:
                server.stop()
        results.append({"type_k": type_k, "type_v": type_v, "idle_rss_mib": rss})
    return results


def run_quality() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "quality.py"), "--cache-types"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-400:]}
    return {"cache_types": json.loads(done.stdout.strip().splitlines()[-1])}


# -- report -------------------------------------------------------------------------------------


def markdown_lines(report: dict[str, Any] | None) -> list[str]:
    """The report's sections for bench.py's latest.md."""
    if not report:
        return []
    if report.get("error"):
        return ["", f"KV memory bench failed: {report['error']}"]
    lines: list[str] = []
    if any(report.get(k) for k in ("configs", "layouts", "idle_rss", "quality")):
        lines += ["", f"## KV cache: {SLOTS} slots × {CTX_PER_SLOT} tokens, by layout and type"]
    if report.get("configs"):
        lines += [
            "",
            "| configuration | KV MiB | process RSS MiB | decode tok/s, 1 seq "
            f"| decode tok/s, {SLOTS} seqs |",
            "|---|---|---|---|---|",
        ]
    for c in report.get("configs") or []:
        if c.get("error"):
            lines.append(f"| {c['name']} | failed: {c['error'][-120:]} | | | |")
            continue
        speed = c["decode_tok_s"]
        lines.append(
            f"| {c['name']} | {c['kv_mib']} | {c['rss_mib']} | {speed['1']} | {speed[str(SLOTS)]} |"
        )
    idle = report.get("idle_rss") or []
    if idle:
        lines += ["", f"Idle `hearth serve --parallel {SLOTS} --ctx-size {CTX_PER_SLOT}`:", ""]
        lines += ["| cache types (K/V) | idle RSS MiB |", "|---|---|"]
        lines += [f"| {r['type_k']}/{r['type_v']} | {r['idle_rss_mib']} |" for r in idle]
    layouts = report.get("layouts") or {}
    if layouts.get("error"):
        lines += ["", f"Layout race failed: {layouts['error']}"]
    elif layouts:
        lines += [
            "",
            f"Split against unified KV in one process, {layouts['rounds']} alternating rounds "
            f"of {layouts['steps']} steps (median step):",
            "",
            "| sequences | split tok/s | unified tok/s | unified ÷ split |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {b} | {layouts[f'split_tok_s_{b}']} | {layouts[f'unified_tok_s_{b}']} "
            f"| {layouts[f'unified_over_split_{b}']} |"
            for b in (1, SLOTS)
        ]
    quality = report.get("quality") or {}
    if quality.get("error"):
        lines += ["", f"Quality bench failed: {quality['error']}"]
    elif quality:
        rows = quality["cache_types"]
        lines += [
            "",
            f"Top-1 agreement with an f16 cache, teacher-forced over {rows[0]['positions']} "
            "positions (bench/quality.py --cache-types):",
            "",
            "| K | V | flash attention | top-1 agreement |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['type_k']} | {r['type_v']} | {'on' if r['flash_attn'] else 'off'} "
            f"| {r['top1_agreement']:.1%} |"
            for r in rows
        ]
    restart = report.get("restart") or {}
    if restart.get("error"):
        lines += ["", f"Restart bench failed: {restart['error']}"]
    elif restart:
        lines += [
            "",
            f"## Prompt cache across a restart: the next turn of a {restart['prompt_tokens']}"
            "-token chat",
            "",
            "| restored TTFT ms | cold TTFT ms | restored ÷ cold | cached tokens | same answer "
            "| saved MiB |",
            "|---|---|---|---|---|---|",
            f"| {restart['restored_ttft_ms']} | {restart['cold_ttft_ms']} "
            f"| {restart['restored_over_cold']} | {restart['restored_cached_tokens']} "
            f"| {restart['same_answer']} | {restart['saved_mib']} |",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer steps, a shorter chat")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--skip", default="", help="comma-separated: configs, layouts, restart, idle, quality"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--race", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(json.loads(args.probe))))
        return 0
    if args.race:
        rounds, steps = (int(part) for part in args.race.split(","))
        print(json.dumps(race(rounds, steps)))
        return 0
    skip = set(args.skip.split(","))
    report: dict[str, Any] = {}
    if "configs" not in skip:
        report["configs"] = run_configs(steps=12 if args.quick else 40)
    if "layouts" not in skip:
        report["layouts"] = run_race(rounds=2 if args.quick else 8, steps=8 if args.quick else 16)
    if "restart" not in skip:
        try:
            report["restart"] = run_restart(exchanges=3 if args.quick else 9)
        except Exception as exc:  # a bench reports, it does not crash
            report["restart"] = {"error": f"{type(exc).__name__}: {exc}"}
    if "idle" not in skip:
        report["idle_rss"] = run_idle_rss()
    if "quality" not in skip:
        report["quality"] = run_quality()
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(markdown_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
