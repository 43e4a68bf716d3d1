"""How pending embedding inputs become llama_decode calls: plain Python over token counts.

The embedder thread takes a *round* of inputs from the front of its FIFO, decodes the round in
one or more *steps* (one llama_decode each, one seq_id per input), then clears the KV memory.
A round holds at most `max_seqs` inputs and, when the context keeps a KV cache, at most
`round_tokens` tokens (the cache never needs more cells than that). A step holds at most
`step_tokens` tokens, which llama.cpp computes as a single ubatch: its pooled vector for a
sequence covers only that sequence's tokens in that ubatch.

With `split=True` (a causal model with a KV cache and mean or last-token pooling) an input may be
cut across steps: later chunks attend to the earlier ones through the cache, so the mean of the
whole input is the token-weighted mean of its chunks' means, and the last token's vector is the
last chunk's. Otherwise every input stays whole inside one step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EmbedChunk", "EmbedRound", "l2_normalize", "merge_chunk_vectors", "plan_round"]


@dataclass(frozen=True, slots=True)
class EmbedChunk:
    """Tokens [start, start + length) of the round's input `seq`, decoded as seq_id `seq`."""

    seq: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class EmbedRound:
    n_inputs: int  # how many inputs, from the front of the queue, this round takes
    steps: tuple[tuple[EmbedChunk, ...], ...]


def plan_round(
    lengths: Sequence[int],
    *,
    step_tokens: int,
    round_tokens: int | None,
    max_seqs: int,
    split: bool,
) -> EmbedRound:
    """Plan one round over the queued inputs' token counts, in arrival order.

    Takes the longest prefix of `lengths` that fits `max_seqs` and `round_tokens` (always at
    least the first input), then packs it into steps of at most `step_tokens` tokens.
    """
    if not lengths:
        return EmbedRound(0, ())
    if step_tokens < 1 or max_seqs < 1:
        raise ValueError("step_tokens and max_seqs must be positive")
    limit = step_tokens if not split else (round_tokens or math.inf)
    if round_tokens is not None:
        limit = min(limit, round_tokens)
    if not 0 < lengths[0] <= limit:
        raise ValueError(f"an input of {lengths[0]} tokens does not fit one round ({limit})")

    taken: list[int] = []
    total = 0
    for length in lengths:
        if len(taken) == max_seqs or not 0 < length <= limit:
            break
        if round_tokens is not None and total + length > round_tokens:
            break
        taken.append(length)
        total += length

    steps: list[tuple[EmbedChunk, ...]] = []
    current: list[EmbedChunk] = []
    room = step_tokens
    for seq, length in enumerate(taken):
        start = 0
        while start < length:
            if not split and length > room:
                steps.append(tuple(current))  # never empty: length <= step_tokens
                current, room = [], step_tokens
            size = min(length - start, room)
            current.append(EmbedChunk(seq, start, size))
            start += size
            room -= size
            if room == 0:
                steps.append(tuple(current))
                current, room = [], step_tokens
    if current:
        steps.append(tuple(current))
    return EmbedRound(len(taken), tuple(steps))


def merge_chunk_vectors(parts: Sequence[tuple[int, Sequence[float]]], *, mean: bool) -> list[float]:
    """One input's vector from its chunks' pooled vectors, each with its token count.

    Mean pooling: the token-weighted mean of the chunk means. Any other pooling: the last
    chunk's vector (last-token pooling ends there; unsplit inputs have a single chunk).
    """
    if not parts:
        raise ValueError("no chunk vectors to merge")
    if not mean or len(parts) == 1:
        return list(parts[-1][1])
    total = sum(n for n, _ in parts)
    merged = [0.0] * len(parts[0][1])
    for n, vector in parts:
        weight = n / total
        for i, value in enumerate(vector):
            merged[i] += weight * value
    return merged


def l2_normalize(vector: Sequence[float]) -> list[float]:
    """Unit length, so that a dot product is the cosine similarity (as OpenAI's vectors)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0 or not math.isfinite(norm):
        return list(vector)
    return [x / norm for x in vector]
