"""What re-quantizing, or a quantized KV cache, costs in quality: top-1 agreement.

Teacher forcing over a fixed text: both models read the same tokens, and at every position we
compare their most likely next token. 100% means the re-quantized model would have made every
greedy choice the original makes on this text.

    .venv/bin/python bench/quality.py /path/to/requantized.gguf
    .venv/bin/python bench/quality.py --cache-types    # KV cache types against an f16 cache

With --cache-types the model is the same and only the KV cache's types differ (flash attention
on for all, as a quantized V cache needs it): the reference keeps K and V in f16.
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

import llama_cpp as llama

from hearth.engine.llama_runner import init_backend
from hearth.models.registry import embedded_model_path
from hearth.settings import physical_cores

TEXT = (
    "The history of bread goes back at least thirty thousand years. People ground wild grains "
    "into flour, mixed it with water and baked the paste on hot stones. Leavened bread came "
    "later: a dough left out gathered wild yeasts from the air and rose. Egyptian bakers kept "
    "a piece of each dough to start the next one, the same sourdough method bakers use today. "
    "In medieval towns, bakers' guilds fixed the weight and the price of a loaf, and a baker who "
    "sold short weight could be fined or put in the stocks. Industrial mills and commercial "
    "yeast changed everything in the nineteenth century: white bread became cheap, and sliced "
    "bread arrived in 1928. Today home baking is popular again, and many people keep a jar of "
    "sourdough starter in the kitchen, feeding it flour and water every day."
)


# --cache-types: (K, V) pairs measured against f16/f16.
CACHE_TYPES = [("q8_0", "f16"), ("q8_0", "q8_0"), ("q4_0", "f16"), ("q4_0", "q4_0")]
_GGML_TYPES = {
    "f16": llama.GGML_TYPE_F16,
    "q8_0": llama.GGML_TYPE_Q8_0,
    "q4_0": llama.GGML_TYPE_Q4_0,
}


def argmaxes(
    model_path: Path,
    threads: int,
    cache_types: tuple[str, str] | None = None,
    flash_attn: int = 1,
) -> list[int]:
    model = llama.llama_model_load_from_file(
        str(model_path).encode(), llama.llama_model_default_params()
    )
    vocab = llama.llama_model_get_vocab(model)
    params = llama.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 1024, 1024, 1024
    params.n_threads = params.n_threads_batch = threads
    if cache_types is not None:
        params.flash_attn_type = flash_attn  # 1, on: a quantized V cache needs it
        params.type_k, params.type_v = (_GGML_TYPES[t] for t in cache_types)
    ctx = llama.llama_init_from_model(model, params)
    data = TEXT.encode()
    buffer = (llama.llama_token * 1024)()
    n = llama.llama_tokenize(vocab, data, len(data), buffer, 1024, False, False)
    batch = llama.llama_batch_init(n, 0, 1)
    for i in range(n):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = buffer[i], i, 1
        batch.seq_id[i][0], batch.logits[i] = 0, 1
    batch.n_tokens = n
    if llama.llama_decode(ctx, batch) != 0:
        raise RuntimeError("decode failed")
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    best = []
    for i in range(n - 1):
        row = ctypes.cast(llama.llama_get_logits_ith(ctx, i), ctypes.POINTER(ctypes.c_float))
        values = row[:n_vocab]
        best.append(max(range(n_vocab), key=values.__getitem__))
    llama.llama_batch_free(batch)
    llama.llama_free(ctx)
    llama.llama_model_free(model)
    return best


def cache_type_agreement(model_path: Path, threads: int) -> list[dict[str, object]]:
    """Top-1 agreement of each KV cache type pair with an f16 cache, on the same model."""
    reference = argmaxes(model_path, threads, ("f16", "f16"))
    results: list[dict[str, object]] = []
    # The noise floor: the same f16 cache with flash attention off (another summation order).
    runs = [("f16", "f16", 0), *((k, v, 1) for k, v in CACHE_TYPES)]
    for type_k, type_v, flash_attn in runs:
        candidate = argmaxes(model_path, threads, (type_k, type_v), flash_attn)
        agree = sum(a == b for a, b in zip(reference, candidate, strict=True))
        results.append(
            {
                "type_k": type_k,
                "type_v": type_v,
                "flash_attn": bool(flash_attn),
                "positions": len(reference),
                "top1_agreement": round(agree / len(reference), 4),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path, nargs="?", help="the re-quantized GGUF")
    parser.add_argument("--reference", type=Path, default=None, help="default: embedded model")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument(
        "--cache-types", action="store_true", help="compare KV cache types instead of models"
    )
    args = parser.parse_args()
    init_backend()
    if args.cache_types:
        print(
            json.dumps(cache_type_agreement(args.reference or embedded_model_path(), args.threads))
        )
        return
    if args.candidate is None:
        parser.error("give the re-quantized GGUF, or --cache-types")
    reference = argmaxes(args.reference or embedded_model_path(), args.threads)
    candidate = argmaxes(args.candidate, args.threads)
    agree = sum(a == b for a, b in zip(reference, candidate, strict=True))
    print(
        json.dumps(
            {
                "candidate": str(args.candidate),
                "positions": len(reference),
                "top1_agreement": round(agree / len(reference), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
