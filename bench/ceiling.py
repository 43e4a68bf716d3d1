"""The ceiling: a bare llama.cpp decode loop with no server, to compare Hearth's tok/s against.

    .venv/bin/python bench/ceiling.py --batch-sizes 1,16 --tokens 128 --threads 2

For each batch size B it builds the context Hearth would (one sequence per slot, split KV,
n_seq_max = B, the same threads). It prefills the benchmark's own chat prompts, rendered with the
model's template as Hearth renders them and packed into batches of up to n_batch tokens, then
runs the decode loop: one llama_decode per step with B rows, and one C sampler chain per sequence
(logit_bias on the end-of-generation tokens, top_k 40, min_p 0.05, temp, dist(seed)): the chain
Hearth builds for the benchmark's requests. No HTTP, no asyncio, no detokenizing.
Two figures per batch size: `tok_s` times the decode loop only; `e2e_tok_s` times the prefill
too, which is what a server's aggregate output tok/s pays for.
`--json` prints one JSON object on stdout for bench.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import llama_cpp as llama

from hearth.models.chat_template import ChatTemplate
from hearth.models.registry import embedded_model_path
from hearth.settings import physical_cores
from prompts import chat_messages

TOP_K = 40
MIN_P = 0.05
TEMPERATURE = 0.7
# Same bias as bench.py sends: bans end of generation so every sequence decodes --tokens tokens.
EOG_BIAS = -100.0
N_BATCH = 512
WARMUP_STEPS = 8


@dataclass
class CeilingResult:
    batch_size: int
    tokens_per_seq: int
    prompt_tokens: int
    decode_s: float
    prefill_s: float
    tok_s: float
    e2e_tok_s: float
    tok_s_runs: list[float]
    step_ms_p50: float  # one decode step (llama_decode + sampling every row), the median
    tok_s_p50: float  # batch_size ÷ step_ms_p50: like for like with a stream's 1 ÷ ITL p50


@dataclass
class _Run:
    prefill_s: float
    decode_s: float
    steps_s: list[float]


@llama.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet(level: int, text: bytes, _user_data: Any) -> None:
    # Module-level, so ctypes keeps the callback alive; llama.cpp's INFO lines would flood stderr.
    if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
        sys.stderr.write(text.decode("utf-8", "replace"))


def parse_sizes(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch-sizes", type=parse_sizes, default=[1, 16])
    parser.add_argument("--tokens", type=int, default=128, help="decoded tokens per sequence")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument(
        "--ctx-per-seq", type=int, default=2048, help="KV cells per sequence (Hearth's ctx-size)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size")
    parser.add_argument(
        "--variant", type=int, default=None, help="prompts of this variant (prompts.chat_messages)"
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: embedded)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    args.threads = args.threads or physical_cores()
    args.model = args.model or embedded_model_path()
    return args


class Ceiling:
    def __init__(self, model_path: Path, threads: int, ctx_per_seq: int) -> None:
        llama.llama_log_set(_quiet, ctypes.c_void_p(0))
        llama.llama_backend_init()
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 999  # as Hearth's default (-1: all that fit); none on a CPU build
        self.model = llama.llama_model_load_from_file(str(model_path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama.llama_vocab_n_tokens(self.vocab))
        self.eog = [t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, t)]
        self.threads = threads
        self.ctx_per_seq = ctx_per_seq

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buffer = (llama.llama_token * (len(data) + 8))()
        n = llama.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), True, True)
        return list(buffer[:n])

    def sampler(self, seed: int) -> Any:
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        add = llama.llama_sampler_chain_add
        biases = (llama.llama_logit_bias * len(self.eog))(
            *(llama.llama_logit_bias(t, EOG_BIAS) for t in self.eog)
        )
        add(chain, llama.llama_sampler_init_logit_bias(self.n_vocab, len(self.eog), biases))
        add(chain, llama.llama_sampler_init_top_k(TOP_K))
        add(chain, llama.llama_sampler_init_min_p(MIN_P, 1))
        add(chain, llama.llama_sampler_init_temp(TEMPERATURE))
        add(chain, llama.llama_sampler_init_dist(seed))
        return chain

    def run(
        self, batch_size: int, tokens: int, repeats: int, variant: int | None = None
    ) -> CeilingResult:
        params = llama.llama_context_default_params()
        # The context Hearth's LlamaRunner builds with parallel = batch_size.
        params.n_ctx = self.ctx_per_seq * batch_size
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = batch_size
        params.n_threads = params.n_threads_batch = self.threads
        params.kv_unified = False
        params.no_perf = True
        ctx = llama.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        batch = llama.llama_batch_init(max(N_BATCH, batch_size), 0, 1)
        try:
            prompts = [
                self.tokenize(self.render(chat_messages(i, variant))) for i in range(batch_size)
            ]
            # The first pass warms caches and page faults and is not reported.
            self._generate(ctx, batch, prompts, WARMUP_STEPS)
            runs = [self._generate(ctx, batch, prompts, tokens) for _ in range(repeats)]
        finally:
            llama.llama_batch_free(batch)
            llama.llama_free(ctx)
        prefill_s = statistics.median(run.prefill_s for run in runs)
        decode_s = statistics.median(run.decode_s for run in runs)
        step_s = statistics.median(step for run in runs for step in run.steps_s)
        total = batch_size * tokens
        return CeilingResult(
            batch_size=batch_size,
            tokens_per_seq=tokens,
            prompt_tokens=sum(len(p) for p in prompts),
            decode_s=round(decode_s, 4),
            prefill_s=round(prefill_s, 4),
            tok_s=round(total / decode_s, 2),
            e2e_tok_s=round(total / (prefill_s + decode_s), 2),
            tok_s_runs=[round(total / run.decode_s, 2) for run in runs],
            step_ms_p50=round(step_s * 1000, 3),
            tok_s_p50=round(batch_size / step_s, 2),
        )

    def render(self, messages: list[dict[str, str]]) -> str:
        template = llama.llama_model_chat_template(self.model, None)
        chat = ChatTemplate(template.decode() if template else None)
        text = chat.render(messages)
        return text

    def _generate(self, ctx: Any, batch: Any, prompts: list[list[int]], tokens: int) -> _Run:
        """Prefill every prompt, then decode `tokens` per sequence, timing each step."""
        llama.llama_memory_clear(llama.llama_get_memory(ctx), True)
        samplers = [self.sampler(seed) for seed in range(len(prompts))]
        try:
            start = time.perf_counter()
            last = self._prefill(ctx, batch, prompts, samplers)
            prefilled = time.perf_counter()
            positions = [len(p) for p in prompts]
            steps_s = []
            step_start = prefilled
            for _ in range(tokens):
                for seq, token in enumerate(last):
                    self._set(batch, seq, token, positions[seq], seq, logits=True)
                    positions[seq] += 1
                batch.n_tokens = len(last)
                self._decode(ctx, batch)
                # llama_sampler_sample also accepts the token, as in Hearth's runner.
                last = [int(llama.llama_sampler_sample(s, ctx, r)) for r, s in enumerate(samplers)]
                now = time.perf_counter()
                steps_s.append(now - step_start)
                step_start = now
            return _Run(prefilled - start, step_start - prefilled, steps_s)
        finally:
            for sampler in samplers:
                llama.llama_sampler_free(sampler)

    def _prefill(
        self, ctx: Any, batch: Any, prompts: list[list[int]], samplers: list[Any]
    ) -> list[int]:
        """All prompts, packed into batches of up to N_BATCH tokens as Hearth's scheduler packs
        them when nothing is generating yet; each sequence's first token."""
        pending = [(seq, pos) for seq, prompt in enumerate(prompts) for pos in range(len(prompt))]
        first: dict[int, int] = {}
        for start in range(0, len(pending), N_BATCH):
            rows = pending[start : start + N_BATCH]
            for i, (seq, pos) in enumerate(rows):
                ends = pos == len(prompts[seq]) - 1
                self._set(batch, i, prompts[seq][pos], pos, seq, logits=ends)
            batch.n_tokens = len(rows)
            self._decode(ctx, batch)
            for i, (seq, pos) in enumerate(rows):
                if pos == len(prompts[seq]) - 1:
                    first[seq] = int(llama.llama_sampler_sample(samplers[seq], ctx, i))
        return [first[seq] for seq in range(len(prompts))]

    @staticmethod
    def _set(batch: Any, i: int, token: int, pos: int, seq: int, *, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = int(logits)

    @staticmethod
    def _decode(ctx: Any, batch: Any) -> None:
        code = int(llama.llama_decode(ctx, batch))
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def close(self) -> None:
        llama.llama_model_free(self.model)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ceiling = Ceiling(args.model, args.threads, args.ctx_per_seq)
    try:
        results: list[CeilingResult] = []
        for size in args.batch_sizes:
            result = ceiling.run(size, args.tokens, args.repeats, args.variant)
            results.append(result)
            if not args.json:
                print(
                    f"batch {size:>3}: {result.tok_s:8.1f} tok/s decode "
                    f"({result.tok_s_p50:.1f} from the median step), "
                    f"{result.e2e_tok_s:8.1f} with prefill  (decode runs {result.tok_s_runs})"
                )
    finally:
        ceiling.close()
    if args.json:
        report = {
            "model": str(args.model),
            "threads": args.threads,
            "ctx_per_seq": args.ctx_per_seq,
            "eog_tokens": ceiling.eog,
            "sampler": f"logit_bias(eog {EOG_BIAS:g}), top_k {TOP_K}, min_p {MIN_P}, "
            f"temp {TEMPERATURE}, dist(seed)",
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
