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

import difflib
import enum
from collections import Counter
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "AUTO_MAX_DECODING",
    "Draft",
    "DraftLength",
    "DraftSource",
    "Drafter",
    "SpeculationMode",
    "StepCost",
    "predicted_tokens_kept",
]

# A draft resumes where the longest suffix of the output matches the reference (the prediction,
# or the prompt and output so far) again: at least this long, since a single common token (a
# newline, a space) matches in the wrong place; a match is read back at most this far.
MIN_MATCH = 2
MAX_MATCH = 64
# The most recent occurrences of the output's last token that are tried as match ends.
MAX_CANDIDATES = 256
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
    # On the first draft after a re-alignment: how many tokens of output matched the reference
    # there. Its acceptance estimate starts afresh (`DraftLength`). Else None.
    aligned_on: int | None = None


class _Reference:
    """A token sequence that drafts are read from, with a cursor at the token the output is
    expected to produce next, found again after the output departs from it."""

    def __init__(self, tokens: list[int] | tuple[int, ...]) -> None:
        self.tokens = tokens
        self.positions: dict[int, list[int]] = {}  # token -> its positions, in order
        # how often each pair of neighbours occurs: no match of MIN_MATCH is possible where the
        # output's last pair does not, which spares free text a search at every step
        self.pairs: Counter[tuple[int, int]] = Counter(pairwise(tokens))
        for position, token in enumerate(tokens):
            self.positions.setdefault(token, []).append(position)
        self.cursor: int | None = None
        self.parted_at = 0  # where the output last departed from it

    def append(self, token: int) -> None:
        tokens = self.tokens
        if tokens:
            self.pairs[tokens[-1], token] += 1
        self.positions.setdefault(token, []).append(len(tokens))
        tokens.append(token)  # type: ignore[union-attr]

    def follow(self, token: int) -> None:
        """The output produced `token`: the cursor moves on, or is lost where they part."""
        cursor = self.cursor
        if cursor is None:
            return
        if cursor < len(self.tokens) and self.tokens[cursor] == token:
            self.cursor = cursor + 1
        else:
            self.cursor, self.parted_at = None, cursor

    def realign(self, text: SequenceType[int], before: int) -> int | None:
        """Put the cursor right after the longest suffix of `text` that the reference holds
        ending before `before` (the nearest after where they parted, among equals); the
        match's length, or None when no match is long enough. A token put in place of one
        (a renamed name) resumes at once: the token after the one replaced matches."""
        if not text:
            return None
        tokens, last = self.tokens, text[-1]
        resumes = self.parted_at + 1 < len(tokens) and tokens[self.parted_at + 1] == last
        # The output's own last pair is counted in the text it searches (lookup): seen once more.
        needed = 2 if tokens is text else 1
        if not resumes and (len(text) < 2 or self.pairs[text[-2], last] < needed):
            return None
        candidates = self.positions.get(last, ())
        best_end, best_length = -1, 0
        for end in reversed(candidates[-MAX_CANDIDATES:]):
            if end >= before:
                continue
            length = 1
            limit = min(MAX_MATCH, end + 1, len(text))
            while length < limit and tokens[end - length] == text[-1 - length]:
                length += 1
            if end == self.parted_at + 1:  # the one token after the replaced one
                length = max(length, MIN_MATCH)
            if length > best_length or (
                length == best_length and _nearer(end, best_end, self.parted_at)
            ):
                best_end, best_length = end, length
        if best_length < MIN_MATCH:
            return None
        self.cursor = best_end + 1
        return best_length


def _nearer(end: int, other: int, parted_at: int) -> bool:
    """Whether `end` is nearer than `other` to where the output parted, after it first."""
    if (end >= parted_at) != (other >= parted_at):
        return end >= parted_at
    return abs(end - parted_at) < abs(other - parted_at)


class Drafter:
    """Drafts for one choice from its prediction and from its prompt + output so far. The engine
    pushes every token the choice produces (`push`) and asks for a draft before each step."""

    def __init__(self, prompt: tuple[int, ...], prediction: tuple[int, ...] = ()) -> None:
        self._text = _Reference(list(prompt))
        self._prediction = _Reference(prediction) if prediction else None
        if self._prediction is not None:
            self._prediction.cursor = 0

    def push_context(self, token: int) -> None:
        """Append a token of the prompt or the output to the text that lookups search."""
        self._text.append(token)

    def push(self, token: int) -> None:
        """The choice produced `token`."""
        self._text.follow(token)
        self._text.append(token)
        if self._prediction is not None:
            self._prediction.follow(token)

    def draft(self, max_tokens: int) -> Draft | None:
        if max_tokens <= 0:
            return None
        text = self._text.tokens
        prediction = self._prediction
        if prediction is not None:
            aligned_on: int | None = None
            if prediction.cursor is None:
                aligned_on = prediction.realign(text, len(prediction.tokens))
            cursor = prediction.cursor
            if cursor is not None and cursor < len(prediction.tokens):
                tokens = tuple(prediction.tokens[cursor : cursor + max_tokens])
                return Draft(tokens, DraftSource.PREDICTION, aligned_on)
        lookup = self._text
        aligned_on = None
        if lookup.cursor is None:  # the match must end before the output's last token
            aligned_on = lookup.realign(text, len(text) - 1)
        cursor = lookup.cursor
        if cursor is None or cursor >= len(text):
            lookup.cursor = None
            return None
        tokens = tuple(text[cursor : cursor + max_tokens])
        if min(tokens) < 0:  # an image's stand-ins (types.media_token_ids): never a token
            tokens = tokens[: next(i for i, t in enumerate(tokens) if t < 0)]
            if not tokens:
                return None
        return Draft(tokens, DraftSource.LOOKUP, aligned_on)


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
    # A step the OS preempted (a busy neighbour: seen here, 4 rows timed at 4.8 s where they
    # take 30 ms) counts as at most this many times the average so far, so that one outlier
    # cannot stop drafting for a hundred steps; a real change still moves it 10% a step.
    _CLIP = 3.0

    def __init__(self) -> None:
        self.seconds_by_rows: dict[int, float] = {}  # moving average of each count's steps
        self._line: tuple[float, float] | None = None  # (one row, each row more), once fitted

    def observe(self, rows: int, seconds: float) -> None:
        """A step of `rows` rows, all decoding (no prompt), took `seconds`."""
        averages = self.seconds_by_rows
        average = averages.get(rows)
        if average is not None:
            seconds = min(seconds, self._CLIP * average)
        averages[rows] = _moving(average, seconds, self._WEIGHT)
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
    until the first refusal, so the chance is estimated per position in the draft, each given
    that the tokens before it were kept (a prediction's first token after a change is a guess,
    its tenth after a kept ninth nearly sure): a draft of k yields 1 + p1 + p1·p2 + … + p1…pk
    tokens for k more rows; a position never tried yet is expected to go as the deepest one
    tried. A re-aligned draft starts its estimate afresh, trusting a longer match more. Zero
    means the draft is watched instead of decoded: compared with the tokens the choice then
    produces, which costs no decode, so free text pays nothing and the first watched draft that
    is kept brings decoding back. `on` decodes every draft whole, up to the source's ceiling."""

    def __init__(self, mode: SpeculationMode) -> None:
        self._mode = mode
        # per source and draft position: exponentially weighted (tokens kept, tokens tried)
        self._seen = {source: [_PRIOR[source]] * _MAX[source] for source in DraftSource}
        # per source: the deepest position tried; deeper ones are expected to go as it goes
        self._deepest = {source: -1 for source in DraftSource}
        self._watched: Draft | None = None
        self._watched_kept = 0

    @property
    def watching(self) -> bool:
        return self._watched is not None

    def acceptance(self, source: DraftSource, position: int = 0) -> float:
        """The estimated chance that the draft token at `position` is kept, the ones before it
        having been kept."""
        kept, tried = self._seen[source][position]
        return kept / tried

    def plan(self, draft: Draft, cost: StepCost, rows: int = 1, yielded: float = 1) -> int:
        """How many tokens of `draft` to decode in a step that holds `rows` rows so far (this
        choice's pending token included) and is expected to yield `yielded` tokens without
        this draft (the drafts planned before it included); 0 to watch it instead."""
        if draft.aligned_on is not None:
            self._start_afresh(draft.source, draft.aligned_on)
        most = min(len(draft.tokens), _MAX[draft.source])
        if self._mode is SpeculationMode.ON:
            return most
        seen, deepest = self._seen[draft.source], self._deepest[draft.source]
        without = yielded / cost.cost(rows)
        best, best_rate, expected, chance = 0, 0.0, 1.0, 1.0
        for k in range(1, most + 1):
            kept, tried = seen[k - 1 if k - 1 <= deepest or deepest < 0 else deepest]
            chance *= kept / tried
            expected += chance
            rate = (yielded - 1 + expected) / cost.cost(rows + k)
            if rate > best_rate:
                best, best_rate = k, rate
        return best if best_rate >= _MIN_GAIN * without else 0

    def expected_extra(self, source: DraftSource, length: int) -> float:
        """The tokens a draft of `length` from `source` is expected to add to its step."""
        seen, deepest = self._seen[source], self._deepest[source]
        expected, chance = 0.0, 1.0
        for k in range(1, length + 1):
            kept, tried = seen[k - 1 if k - 1 <= deepest or deepest < 0 else deepest]
            chance *= kept / tried
            expected += chance
        return expected

    def _start_afresh(self, source: DraftSource, match: int) -> None:
        """After a re-alignment on `match` tokens: what was seen before says nothing about this
        place. A longer match is likelier the right place: its first token starts at
        match / (match + 1), never above the source's prior."""
        kept, tried = _PRIOR[source]
        first = min(kept / tried, match / (match + 1)) * tried
        self._seen[source] = [(first, tried)] + [_PRIOR[source]] * (_MAX[source] - 1)
        self._deepest[source] = -1

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
        """`accepted` of `drafted` tokens were kept: the positions before the first refusal
        succeeded, the refused one failed, the ones after it were not tried."""
        seen, decay = self._seen[source], _ACCEPTANCE_DECAY
        tried_up_to = min(accepted + 1, drafted, len(seen))
        for position in range(tried_up_to):
            kept, tried = seen[position]
            seen[position] = (decay * kept + (position < accepted), decay * tried + 1)
        self._deepest[source] = max(self._deepest[source], tried_up_to - 1)


def predicted_tokens_kept(prediction: SequenceType[int], output: SequenceType[int]) -> int:
    """How many of the prediction's tokens the output holds, in order (OpenAI's accepted
    prediction tokens; the rest are its rejected ones), whether or not they were drafted: the
    matching blocks of a diff of the two. Once per request, at its end."""
    if not prediction or not output:
        return 0
    matcher = difflib.SequenceMatcher(None, prediction, output, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())
