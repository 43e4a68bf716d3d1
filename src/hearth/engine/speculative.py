"""Speculative decoding without a second model: drafts from the request's own text.

A draft is a guess at the next tokens of one sequence. The engine decodes the sequence's
pending token and the draft as rows of one `llama_decode` (logits on every row), then verifies
them in order: at row i it samples the next token from the request's own sampler chain, exactly
as without speculation, and moves on to row i + 1 only while the sampled token equals draft
token i. The first token that differs (or the token after a wholly accepted draft) is kept too;
the KV cells of the rejected rows are removed (`llama_memory_seq_rm`).

Why the output is distributed exactly as without speculation: a draft from text is a point
mass q = δ(d). The speculative-sampling rule (Leviathan et al., Chen et al.) accepts d with
probability min(1, p(d) / q(d)) = p(d), and on rejection samples from max(0, p − q)
renormalised, which is p with d removed and renormalised. Sampling x ~ p and accepting iff
x = d does both at once: P(accept) = p(d), and a rejected x is p conditioned on x ≠ d. Here p is
whatever the chain samples from (penalties, grammar, logit bias, top-k, top-p, min-p,
temperature), so every sampler is honoured, and the chain only ever accepts the tokens that
are kept, so penalty and grammar state never see a rejected draft. At temperature 0 the kept
tokens are the greedy ones; with a seed, even the random draws happen in the same order.

Where drafts come from (`Drafter`):
- the request's `prediction` (OpenAI's Predicted Outputs), followed with a cursor that moves
  as the output agrees with it, and found again after the output departs from it;
- else prompt lookup: the last n tokens of the prompt + output so far, looked up in that same
  text, and what followed their latest earlier occurrence.

How much to draft (`DraftLength`): drafts cost rows in the batch, so in `auto` a sequence drafts
only while few sequences decode, and decodes its drafts only while they are being accepted;
otherwise it watches them (compares each with the tokens it then produces, for free) until one
is kept. The length grows while whole drafts are accepted and shrinks when they are not.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from dataclasses import dataclass

__all__ = [
    "AUTO_MAX_DECODING",
    "Draft",
    "DraftLength",
    "DraftSource",
    "Drafter",
    "SpeculationMode",
]

# The n-gram sizes looked up, longest first; a single token matches too often to be worth a row.
NGRAM_MAX = 3
NGRAM_MIN = 2
# After the output departs from the prediction (a renamed variable), the next token is looked
# for this far ahead of where they parted, before any n-gram search of the whole prediction.
RESYNC_WINDOW = 16
# In auto, sequences draft only while at most this many decode in a step: beyond it the rows
# are better spent on other sequences (batching already uses the compute).
AUTO_MAX_DECODING = 4


class SpeculationMode(enum.StrEnum):
    AUTO = "auto"  # draft while the batch has room and drafts are being accepted
    ON = "on"  # always draft when a draft exists
    OFF = "off"  # never (a prediction is then accepted and ignored)


class DraftSource(enum.Enum):
    PREDICTION = "prediction"
    LOOKUP = "lookup"


@dataclass(frozen=True, slots=True)
class Draft:
    tokens: tuple[int, ...]
    source: DraftSource


class Drafter:
    """Drafts for one choice from its prediction and from its prompt + output so far. The engine
    pushes every token the choice produces (`push`) and asks for a draft before each step."""

    def __init__(self, prompt: tuple[int, ...], prediction: tuple[int, ...] = ()) -> None:
        self._text: list[int] = []
        # n-gram -> where what followed its latest occurrence starts, in _text
        self._follows: dict[tuple[int, ...], int] = {}
        for token in prompt:
            self.push_context(token)
        self._prediction = prediction
        # n-gram -> every position in the prediction right after one of its occurrences
        self._prediction_follows: dict[tuple[int, ...], list[int]] = {}
        for n in range(NGRAM_MIN, NGRAM_MAX + 1):
            for end in range(n, len(prediction)):
                key = prediction[end - n : end]
                self._prediction_follows.setdefault(key, []).append(end)
        self._cursor: int | None = 0 if prediction else None  # next prediction token expected
        self._parted_at = 0  # where the output last departed from the prediction

    def push_context(self, token: int) -> None:
        """Append a token of the prompt or the output to the text that lookups search."""
        text = self._text
        text.append(token)
        end = len(text) - 1  # n-grams ending just before this token are followed by it
        for n in range(NGRAM_MIN, NGRAM_MAX + 1):
            if end >= n:
                self._follows[tuple(text[end - n : end])] = end

    def push(self, token: int) -> None:
        """The choice produced `token`."""
        self.push_context(token)
        cursor = self._cursor
        if cursor is not None:
            if cursor < len(self._prediction) and self._prediction[cursor] == token:
                self._cursor = cursor + 1
            else:
                self._cursor = None
                self._parted_at = cursor

    def draft(self, max_tokens: int) -> Draft | None:
        if max_tokens <= 0:
            return None
        if self._prediction:
            cursor = self._cursor if self._cursor is not None else self._find_in_prediction()
            self._cursor = cursor
            if cursor is not None and cursor < len(self._prediction):
                return Draft(self._prediction[cursor : cursor + max_tokens], DraftSource.PREDICTION)
        text = self._text
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if len(text) <= n:
                continue
            start = self._follows.get(tuple(text[-n:]))
            if start is not None:
                return Draft(tuple(text[start : start + max_tokens]), DraftSource.LOOKUP)
        return None

    def _find_in_prediction(self) -> int | None:
        """Where in the prediction the output goes on, after it departed from it: its last token
        a little ahead of where they parted, else its last n-gram, nearest after that."""
        text, prediction, parted = self._text, self._prediction, self._parted_at
        last = text[-1]
        for position in range(parted, min(parted + RESYNC_WINDOW, len(prediction))):
            if prediction[position] == last:
                return position + 1
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            positions = self._prediction_follows.get(tuple(text[-n:]))
            if positions:
                after = bisect_left(positions, parted)
                return positions[after] if after < len(positions) else positions[-1]
        return None


# Draft lengths: the first try, the ceiling, and how far a sequence backs off after rejections.
_START = {DraftSource.PREDICTION: 8, DraftSource.LOOKUP: 4}
_MAX = {DraftSource.PREDICTION: 32, DraftSource.LOOKUP: 16}
_MIN = 2
# In auto, a choice decodes its drafts only while a moving average of the share of draft tokens
# kept is at least this: on a CPU a draft row costs about half a decode step or more, so drafts
# pay only when most of their rows are kept.
AUTO_MIN_ACCEPTANCE = 0.6
_RATE_WEIGHT = 0.3  # of the latest draft in the moving average
# Where the average starts: prompt lookup must earn its first decoded draft (one wholly kept
# watched draft does it); a prediction is the client's own guess and is decoded from the start.
_RATE_START_LOOKUP = 0.5


class DraftLength:
    """How many draft tokens one choice tries next, and whether the next draft is decoded or
    only watched: lengths double after a wholly accepted draft and are cut to what was accepted
    + 1 otherwise. In auto, while the choice's drafts are mostly refused, its drafts are watched
    instead of decoded: compared with the tokens the choice then produces, which costs no
    decode, so free text pays nothing and the first watched draft that is kept brings decoding
    back."""

    def __init__(self, mode: SpeculationMode, *, predicted: bool = False) -> None:
        self._mode = mode
        self._length = dict(_START)
        # moving average of accepted / drafted, over decoded and watched drafts alike
        self._rate = 1.0 if predicted else _RATE_START_LOOKUP
        self._watched: Draft | None = None
        self._watched_kept = 0

    def decodes(self) -> bool:
        """Whether the next draft goes into the batch (else it is only watched)."""
        return self._mode is SpeculationMode.ON or self._rate >= AUTO_MIN_ACCEPTANCE

    @property
    def watching(self) -> bool:
        return self._watched is not None

    def watch(self, draft: Draft) -> None:
        """Follow `draft` against the tokens produced next, instead of decoding it."""
        self._watched, self._watched_kept = draft, 0

    def length(self, source: DraftSource) -> int:
        return self._length[source]

    def produced(self, token: int) -> None:
        """The choice produced `token`: a watched draft is kept or refused as a decoded one would
        have been (the same sample, the same rule)."""
        watched = self._watched
        if watched is None:
            return
        if token == watched.tokens[self._watched_kept]:
            self._watched_kept += 1
            if self._watched_kept < len(watched.tokens):
                return
        self._watched = None
        self.verified(watched.source, len(watched.tokens), self._watched_kept)

    def verified(self, source: DraftSource, drafted: int, accepted: int) -> None:
        if accepted == drafted:
            self._length[source] = min(_MAX[source], max(self._length[source], drafted) * 2)
        else:
            self._length[source] = max(_MIN, accepted + 1)
        self._rate += _RATE_WEIGHT * (accepted / drafted - self._rate)
