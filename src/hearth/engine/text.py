"""Token bytes to text, and stop strings. Pure Python, run on the engine thread per token."""

from __future__ import annotations

import codecs

from hearth.engine.types import ReasoningBudget

__all__ = ["StopMatcher", "ThinkingTracker", "Utf8Stream"]


class Utf8Stream:
    """Joins token pieces into text; a character split across tokens comes out whole."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text and holds back what might start one.

    `push` returns the text that is safe to send. Text that could be the start of a stop string
    waits until the next piece decides; so a stop string split across tokens is never sent.
    """

    __slots__ = ("_held", "_max_len", "_stops", "matched", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._max_len = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> str:
        if not self._stops:
            return text
        buffer = self._held + text
        found = [(i, s) for s in self._stops if (i := buffer.find(s)) >= 0]
        if found:
            first, self.matched = min(found)
            self.stopped = True
            self._held = ""
            return buffer[:first]
        keep = self._partial_suffix_len(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The held text, at the end of a generation that did not stop on a string."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix_len(self, buffer: str) -> int:
        # The longest suffix of buffer that is a proper prefix of some stop string.
        for length in range(min(len(buffer), self._max_len - 1), 0, -1):
            tail = buffer[-length:]
            if any(s.startswith(tail) for s in self._stops):
                return length
        return 0


class ThinkingTracker:
    """Where a generation is in its reasoning block, from its text as it is produced, and the
    close the engine writes when the budget runs out. One block per generation: once closed,
    the rest is the answer."""

    __slots__ = ("_budget", "_tail", "closed", "forced", "inside", "tokens")

    def __init__(self, budget: ReasoningBudget) -> None:
        self._budget = budget
        self._tail = ""
        self.inside = budget.starts_open
        self.closed = False
        self.tokens = 0  # generated inside the block
        self.forced: list[int] = []  # close tokens still to write

    def force_close(self) -> bool:
        """Whether the budget ran out: if so, the close tokens are queued in `forced`. A close
        the model has begun to write itself is let finish."""
        budget = self._budget.budget
        if self.inside and not self.forced and 0 <= budget <= self.tokens and not self._closing():
            self.forced = list(self._budget.close_tokens)
            return True
        return False

    def close_at_end(self) -> bool:
        """The model ended its turn inside the block: queue the close in `forced`, so that it
        answers instead of ending with thinking only (once: an end right after it is the end)."""
        if self.inside and not self.closed and not self.forced:
            self.forced = list(self._budget.close_tokens)
            return True
        return False

    def _closing(self) -> bool:
        close, tail = self._budget.close_text, self._tail
        return any(close.startswith(tail[-n:]) for n in range(1, len(tail) + 1))

    def observe(self, piece: str, *, written: bool = False) -> None:
        """The text of one more token: the model's, or `written` by the engine (the close,
        which is not thinking)."""
        if self.closed:
            return
        if self.inside and not written:
            self.tokens += 1
        text = self._tail + piece
        if not self.inside:
            opened = text.find(self._budget.open_text)
            if opened < 0:
                self._tail = _last(text, len(self._budget.open_text) - 1)
                return
            self.inside = True
            text = text[opened + len(self._budget.open_text) :]
        if self._budget.close_text in text:
            self.inside, self.closed, self._tail = False, True, ""
        else:
            self._tail = _last(text, len(self._budget.close_text) - 1)


def _last(text: str, n: int) -> str:
    return text[-n:] if n > 0 else ""
