"""A pure-Python ModelRunner: tokens are bytes, and each sequence follows a script.

Sampling returns the next token of the script registered for the prompt's first token, so
tests know exactly what every step must produce.
"""

from __future__ import annotations

import json
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field
from pathlib import Path

from hearth.engine.scheduler import Chunk
from hearth.engine.types import SamplingParams, TokenLogprob

EOG = 256


@dataclass
class FakeSampler:
    params: SamplingParams
    script: list[int] | None = None  # bound on the first sample: it depends on the row
    position: int = 0
    accepted: list[int] = field(default_factory=list)  # tokens the engine wrote itself


@dataclass
class FakeRunner:
    n_ctx_per_slot: int = 64
    scripts: dict[int, list[int]] = field(default_factory=dict)  # first prompt token -> output
    decoded: list[list[Chunk]] = field(default_factory=list)
    trims: list[tuple[int, int]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    saves: list[tuple[int, int]] = field(default_factory=list)  # (seq_id, tokens)
    loads: list[tuple[int, Path]] = field(default_factory=list)
    fail_next_decode: int = 0
    freed: int = 0
    _row_to_first_token: dict[int, int] = field(default_factory=dict)

    def decode(self, chunks: SequenceType[Chunk]) -> int:
        if self.fail_next_decode:
            status, self.fail_next_decode = self.fail_next_decode, 0
            return status
        self.decoded.append(list(chunks))
        self._row_to_first_token = {}
        row = -1
        for chunk in chunks:
            row += len(chunk.tokens)
            for draft_row in range(row - chunk.n_draft, row + 1):  # a draft's rows have logits
                self._row_to_first_token[draft_row] = chunk.sequence.prompt[0]
        return 0

    def new_sampler(self, params: SamplingParams) -> object:
        return FakeSampler(params)

    def sample(self, sampler: object, batch_row: int) -> int:
        assert isinstance(sampler, FakeSampler)
        if sampler.script is None:
            sampler.script = self.scripts.setdefault(self._row_to_first_token[batch_row], [])
        position = sampler.position
        sampler.position += 1
        return sampler.script[position] if position < len(sampler.script) else ord("x")

    def accept(self, sampler: object, token: int) -> None:
        assert isinstance(sampler, FakeSampler)
        sampler.accepted.append(token)

    def token_logprob(self, batch_row: int, token: int, top_k: int) -> TokenLogprob:
        # Every token is as likely as 1/e: enough to check the plumbing.
        alternatives = ((token, self.token_bytes(token), -1.0),)
        return TokenLogprob(token, self.token_bytes(token), -1.0, alternatives[:top_k])

    def free_sampler(self, sampler: object) -> None:
        self.freed += 1

    def is_end_of_generation(self, token: int) -> bool:
        return token == EOG

    def token_bytes(self, token: int) -> bytes:
        return bytes([token])

    def kv_trim(self, seq_id: int, from_pos: int) -> None:
        self.trims.append((seq_id, from_pos))

    def kv_copy(self, src: int, dst: int) -> None:
        self.copies.append((src, dst))

    def kv_save(self, seq_id: int, path: Path, tokens: SequenceType[int]) -> bool:
        # The "state" is the token list itself: enough to check what goes where.
        path.write_text(json.dumps({"seq_id": seq_id, "tokens": list(tokens)}))
        self.saves.append((seq_id, len(tokens)))
        return True

    def kv_load(self, seq_id: int, path: Path, max_tokens: int) -> list[int] | None:
        self.loads.append((seq_id, path))
        try:
            tokens: list[int] = json.loads(path.read_text())["tokens"]
        except (ValueError, KeyError):
            return None
        return tokens if len(tokens) <= max_tokens else None


def text_tokens(text: str) -> list[int]:
    return list(text.encode())
