"""The AMX probe's child process (`engine/amx_probe.py`): load a model with every buffer type
offered and decode the engine's own shapes. Its own module, so that the probe's parent, which
the runner asks before a load, imports nothing of the runner.

    python -m hearth.engine.amx_probe_child CONFIG_JSON
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from hearth.engine.amx_probe import OK_LINE

__all__ = ["main"]

# English text, repeated to fill the probe's prefill batch with ordinary tokens.
_PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A local server loads a model once and "
    "shares it with every app on the machine, decoding many requests in one batch. "
)


def _decode_shapes(config: dict[str, object]) -> None:
    """The child: load with every buffer type and decode what the engine decodes."""
    from hearth.engine.llama_runner import LlamaRunner, RunnerConfig
    from hearth.engine.scheduler import Chunk, Sequence

    n_slots = max(1, int(cast(int, config["n_slots"])))
    n_batch = max(2, int(cast(int, config["n_batch"])))
    n_prefill = max(1, min(n_batch - n_slots, int(cast(int, config["n_prefill"]))))
    runner = LlamaRunner(
        RunnerConfig(
            model_path=Path(cast(str, config["model_path"])),
            n_slots=n_slots,
            n_ctx_per_slot=2 * n_batch + 64,
            n_threads=int(cast(int, config["n_threads"])),
            n_batch=n_batch,
            repack="on",
        )
    )
    text_tokens = runner.tokenize(_PROBE_TEXT, add_special=False, parse_special=False)
    tokens = (text_tokens * (n_batch // max(1, len(text_tokens)) + 1))[:n_batch]
    positions = [0] * n_slots
    no_sequence = cast(Sequence, None)  # the runner reads seq_id and positions only

    def chunk(seq: int, count: int, n_draft: int = 0) -> Chunk:
        start = positions[seq]
        positions[seq] += count
        return Chunk(no_sequence, seq, start, tokens[:count], True, n_draft)

    def step(chunks: list[Chunk]) -> None:
        status = runner.decode(chunks)
        if status != 0:
            raise SystemExit(f"llama_decode returned {status}")
        rows = sum(len(c.tokens) for c in chunks)
        logprob = runner.token_logprob(rows - 1, tokens[0], 0).logprob
        if not math.isfinite(logprob):
            raise SystemExit("non-finite logits")

    step([chunk(0, n_batch)])  # a full prefill batch
    # Prompts of every size class: AMX's crash depends on the row count (2 rows survived where
    # a chat prompt did not), so odd, even, tile-aligned and tile-straddling counts all run.
    for size in sorted({2, 3, 7, 16, 33, 45, 64, 100, 127, 128, 129, 255, 256, 300, n_batch - 1}):
        if size < n_batch:
            runner.kv_trim(n_slots - 1, 0)
            positions[n_slots - 1] = 0
            step([chunk(n_slots - 1, size)])
    runner.kv_trim(n_slots - 1, 0)
    positions[n_slots - 1] = 0
    for rows in range(1, n_slots + 1):  # decoding steps of 1 to --parallel rows
        step([chunk(seq, 1) for seq in range(rows)])
    if n_slots > 1:  # a prompt chunk beside decoding rows
        step([chunk(0, n_prefill)] + [chunk(seq, 1) for seq in range(1, n_slots)])
    step([chunk(0, 8, n_draft=7)])  # a draft verified row by row
    runner.close()


def main(argv: Sequence[str]) -> int:
    _decode_shapes(json.loads(argv[0]))
    print(OK_LINE, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
