"""Weight repacking (`--repack`): prompt processing and decode speed, `auto` against all off.

    .venv/bin/python bench/repack.py --rounds 3

For each model (the bundled SmolLM2 Q4_1, Gemma 3 270M Q4_K_M, and SmolLM2 re-quantized to Q4_0
as `--quantize q4_0` serves it) it loads the model through the engine's own `LlamaRunner` under
`--repack auto` and `--repack off` in turn, `--rounds` times (alternating, so a noisy neighbour
hits both alike), and times on one sequence:
- prompt processing: one 512-token batch (a full prefill step), tokens per second;
- decode: 128 one-token steps after it, tokens per second.
Medians over the rounds; the ratio auto ÷ off is the figure to quote. Also reports which buffer
types took the weights under each mode and the CPU features of the machine.

Writes bench/results/repack.json and repack.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from hearth.engine.buffer_types import cpu_report
from hearth.engine.llama_runner import LlamaRunner, RunnerConfig
from hearth.engine.quantize import quantize
from hearth.engine.scheduler import Chunk, Sequence
from hearth.models import registry
from hearth.models.gguf_info import read_gguf_info
from hearth.settings import physical_cores

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PROMPT_TOKENS = 512
DECODE_STEPS = 128
MODES = ("auto", "off")
TEXT = (
    "Hearth loads a model once and shares it with every app on the machine. It decodes many "
    "requests together in one batch, keeps each conversation's cache, and answers in the API "
    "each app already speaks. "
)


def _models(workdir: Path) -> list[tuple[str, Path]]:
    smollm2 = registry.resolve("smollm2:135m").path
    gemma = registry.resolve(registry.GEMMA_MODEL_ID).path
    q4_0 = quantize(smollm2, "q4_0", workdir / "smollm2.q4_0.gguf", physical_cores())
    return [
        ("SmolLM2-135M Q4_1 (bundled)", smollm2),
        ("Gemma 3 270M Q4_K_M (bundled)", gemma),
        ("SmolLM2-135M --quantize q4_0", q4_0),
    ]


def _measure(path: Path, mode: str, threads: int) -> dict[str, Any]:
    runner = LlamaRunner(
        RunnerConfig(
            model_path=path,
            n_slots=1,
            n_ctx_per_slot=PROMPT_TOKENS + DECODE_STEPS + 64,
            n_threads=threads,
            n_batch=PROMPT_TOKENS,
            repack=mode,  # type: ignore[arg-type]
            weight_types=read_gguf_info(path).tensor_types,
        )
    )
    try:
        text = runner.tokenize(TEXT, add_special=False, parse_special=False)
        prompt = (text * (PROMPT_TOKENS // len(text) + 1))[:PROMPT_TOKENS]
        none = cast(Sequence, None)  # the runner reads only seq_id and positions
        runner.decode([Chunk(none, 0, 0, prompt[:8], True)])  # warm up, then start afresh
        runner.kv_trim(0, 0)
        started = time.perf_counter()
        assert runner.decode([Chunk(none, 0, 0, prompt, True)]) == 0
        prefill_s = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(DECODE_STEPS):
            token = prompt[step % len(prompt)]
            assert runner.decode([Chunk(none, 0, PROMPT_TOKENS + step, [token], True)]) == 0
        decode_s = time.perf_counter() - started
        return {
            "pp_tok_s": PROMPT_TOKENS / prefill_s,
            "tg_tok_s": DECODE_STEPS / decode_s,
            "buffers_mib": {k: round(v / 2**20, 1) for k, v in runner.weights.buffers.items()},
        }
    finally:
        runner.close()


def run(rounds: int, threads: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "cpu": cpu_report().as_dict(),
        "threads": threads,
        "rounds": rounds,
        "prompt_tokens": PROMPT_TOKENS,
        "decode_steps": DECODE_STEPS,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name, path in _models(Path(workdir)):
            runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for _ in range(rounds):
                for mode in MODES:
                    runs[mode].append(_measure(path, mode, threads))
            row: dict[str, Any] = {"model": name}
            for mode in MODES:
                row[mode] = {
                    "pp_tok_s": round(statistics.median(r["pp_tok_s"] for r in runs[mode]), 1),
                    "tg_tok_s": round(statistics.median(r["tg_tok_s"] for r in runs[mode]), 1),
                    "buffers_mib": runs[mode][-1]["buffers_mib"],
                }
            row["pp_auto_over_off"] = round(row["auto"]["pp_tok_s"] / row["off"]["pp_tok_s"], 2)
            row["tg_auto_over_off"] = round(row["auto"]["tg_tok_s"] / row["off"]["tg_tok_s"], 2)
            report["models"].append(row)
            print(json.dumps(row), file=sys.stderr)
    return report


def markdown(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    lines = [
        f"CPU: {cpu['model']} ({cpu['arch']}, {report['threads']} threads); features: "
        f"{' '.join(cpu['features'])}; llama.cpp extra buffer types: "
        f"{' '.join(cpu['extra_buffer_types']) or 'none'}. Medians of {report['rounds']} "
        f"alternating rounds; prompt processing is one {report['prompt_tokens']}-token batch, "
        f"decode {report['decode_steps']} one-token steps.",
        "",
        "| model | pp tok/s auto | pp tok/s off | pp auto ÷ off | decode tok/s auto "
        "| decode tok/s off | decode auto ÷ off | weights under auto |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["models"]:
        auto, off = row["auto"], row["off"]
        placed = ", ".join(f"{k} {v} MiB" for k, v in auto["buffers_mib"].items())
        lines.append(
            f"| {row['model']} | {auto['pp_tok_s']} | {off['pp_tok_s']} | "
            f"{row['pp_auto_over_off']}× | {auto['tg_tok_s']} | {off['tg_tok_s']} | "
            f"{row['tg_auto_over_off']}× | {placed} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    args = parser.parse_args()
    report = run(args.rounds, args.threads)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "repack.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS_DIR / "repack.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
