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

How much to draft (`DraftLength`, `StepCost`): drafts cost rows in the batch, so in `auto` a
sequence drafts only while few sequences decode, and decodes as many draft tokens as maximise the
step's expected output per second, from the step times the engine measures and the share of
this choice's draft tokens kept so far; when no draft pays, it watches them (compares each with
the tokens it then produces, for free) until they are kept again.
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
    "StepCost",
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


# The longest draft decoded in one step, by source: a prediction is the client's own guess at
# the whole answer; an n-gram's continuation is a guess about the next few tokens.
_MAX = {DraftSource.PREDICTION: 32, DraftSource.LOOKUP: 16}
# Where each source's acceptance estimate starts, as (tokens kept, tokens tried): a prediction
# is decoded from the start; prompt lookup must earn its first decoded draft (one wholly kept
# watched draft does it).
_PRIOR = {DraftSource.PREDICTION: (3.6, 4.0), DraftSource.LOOKUP: (2.0, 4.0)}
_ACCEPTANCE_DECAY = 0.7  # the weight of what was seen before the latest draft
# How much of a draft is watched: short, so that one kept brings decoding back soon.
_WATCHED = 4
# A draft must promise at least this much more output per second than the step without it:
# a margin for the noise in the estimates, so free text pays nothing.
_MIN_GAIN = 1.05


class StepCost:
    """What a decode step costs by its number of rows, learned from the engine's own steps: a
    moving average per row count seen, and a straight line through those for the counts not
    seen. On a CPU every row costs compute, and not evenly (here 4 rows cost about what 3 do:
    the kernels work in tiles); on a GPU a few more rows cost almost nothing. The same rule
    then drafts short on one and long on the other."""

    # Before steps of two row counts were timed: a row costs this share of a one-row step.
    PRIOR_ROW_SHARE = 0.5
    _WEIGHT = 0.1  # of the latest step in each moving average

    def __init__(self) -> None:
        self.seconds_by_rows: dict[int, float] = {}  # moving average of each count's steps
        self._line: tuple[float, float] | None = None  # (one row, each row more), once fitted

    def observe(self, rows: int, seconds: float) -> None:
        """A step of `rows` rows, all decoding (no prompt), took `seconds`."""
        averages = self.seconds_by_rows
        averages[rows] = _moving(averages.get(rows), seconds, self._WEIGHT)
        self._line = None  # fitted again when a count not seen is asked for, not every step

    def cost(self, rows: int) -> float:
        """A step of `rows` rows, in seconds (in one-row steps while none was timed)."""
        seen = self.seconds_by_rows.get(rows)
        if seen is not None:
            return seen
        if self._line is None:
            self._line = self._fit()
        one, per_row = self._line
        return one + per_row * (rows - 1)

    def _fit(self) -> tuple[float, float]:
        """Least squares through the averages, one point per row count."""
        points = self.seconds_by_rows
        if len(points) <= 1:
            ((rows, seconds),) = points.items() if points else ((1, 1.0),)
            one = seconds / (1 + self.PRIOR_ROW_SHARE * (rows - 1))
            return one, one * self.PRIOR_ROW_SHARE
        n = len(points)
        mean_x = sum(points) / n
        mean_y = sum(points.values()) / n
        spread = sum((x - mean_x) ** 2 for x in points)
        slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in points.items()) / spread)
        return max(1e-9, mean_y - slope * (mean_x - 1)), slope


def _moving(average: float | None, value: float, weight: float) -> float:
    return value if average is None else average + weight * (value - average)


class DraftLength:
    """How many draft tokens one choice decodes in the next step: the number that maximises the
    step's expected output per second, given the step's cost by rows (`StepCost`) and this
    choice's estimated chance that each draft token is kept. Drafts are accepted token by token
    until the first refusal, so with a per-token chance p a draft of k yields
    1 + p + ... + p^k tokens for k more rows. Zero means the draft is watched instead of
    decoded: compared with the tokens the choice then produces, which costs no decode, so free
    text pays nothing and the first watched draft that is kept brings decoding back. `on`
    decodes every draft whole, up to the source's ceiling."""

    def __init__(self, mode: SpeculationMode) -> None:
        self._mode = mode
        # per source: exponentially weighted (tokens kept, tokens tried), decoded and watched
        self._seen = dict(_PRIOR)
        self._watched: Draft | None = None
        self._watched_kept = 0

    @property
    def watching(self) -> bool:
        return self._watched is not None

    def acceptance(self, source: DraftSource) -> float:
        """The estimated chance that each token of the next draft from `source` is kept."""
        kept, tried = self._seen[source]
        return kept / tried

    def plan(self, draft: Draft, cost: StepCost, rows: int = 1, yielded: int = 1) -> int:
        """How many tokens of `draft` to decode in a step that holds `rows` rows so far (this
        choice's pending token included) and yields `yielded` tokens without drafts; 0 to
        watch it instead."""
        most = min(len(draft.tokens), _MAX[draft.source])
        if self._mode is SpeculationMode.ON:
            return most
        p = self.acceptance(draft.source)
        without = yielded / cost.cost(rows)
        best, best_rate, expected, chance = 0, 0.0, 1.0, 1.0
        for k in range(1, most + 1):
            chance *= p
            expected += chance
            rate = (yielded - 1 + expected) / cost.cost(rows + k)
            if rate > best_rate:
                best, best_rate = k, rate
        return best if best_rate >= _MIN_GAIN * without else 0

    def watch(self, draft: Draft) -> None:
        """Follow `draft` against the tokens produced next, instead of decoding it."""
        self._watched = Draft(draft.tokens[:_WATCHED], draft.source)
        self._watched_kept = 0

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
        """`accepted` of `drafted` tokens were kept: as many tries succeeded, and one more failed
        unless the whole draft was kept."""
        kept, tried = self._seen[source]
        tries = accepted + (accepted < drafted)
        decay = _ACCEPTANCE_DECAY
        self._seen[source] = (decay * kept + accepted, decay * tried + tries)
