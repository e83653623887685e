"""Constrained decoding of anchored mask text: the model can only write text that decodes strictly.

:class:`AnchoredGrammar` is the character-level automaton of canonical anchored text of an
``h x w`` mask (see :mod:`magseg_ray.rle.anchored`): the first line opens with row ``0``, each later
line with a row strictly after the previous line's and below ``h``; run codes come from the schema
and change from run to run within a line; run ends are strictly increasing and leave room for the
final run (``< w``); numbers have no leading zeros. The answer may end after any line's last code,
since the last line holds to the bottom of the patch. :class:`AnchoredLogitsProcessor` is
:class:`~magseg_ray.rle.constrained.RLELogitsProcessor` (tokens, the budget rule, kind-first greedy
decoding) over this grammar. As with R-RLE, merging identical consecutive rows into one line is
the one thing the grammar does not force; such text still decodes strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from magseg_ray.masks.schemas import Schema, get_schema
from magseg_ray.rle.constrained import _DIGITS, RLELogitsProcessor, _prefix_feasible


@dataclass(frozen=True)
class AnchoredState:
    """Where an answer is in the anchored grammar."""

    row: int = -1
    """First row of the current line (-1 before the first line)."""
    phase: str = "start"
    """``start`` (a row index is due), ``row`` (typing it), ``code`` (after ``:``, a run code is
    due), ``end`` (after a code: its end digits, the next code, a newline or the end), ``done``."""
    col: int = 0
    """Column where the current run starts (the previous run's end)."""
    code: str = ""
    """The current (last written) run code."""
    digits: str = ""
    """Digits typed for the current row index or run end."""


def _feasible(digits: str, lo: int, hi: int) -> bool:
    """Whether some integer in ``[lo, hi]`` is written with ``digits`` as its first digits (``0``
    itself is the one number that starts with a zero)."""
    return lo <= 0 <= hi if digits == "0" else _prefix_feasible(digits, lo, hi)


class AnchoredGrammar:
    """Valid prefixes of canonical anchored text for an ``h x w`` mask of ``schema``."""

    symbols = ":\n"
    """The characters of the text besides digits and class codes."""
    start = AnchoredState()
    """The state of an empty answer."""
    done = AnchoredState(phase="done")
    """The state after the end of the answer."""

    def __init__(self, h: int, w: int, schema: str | Schema):
        self.h, self.w = h, w
        self.codes = get_schema(schema).codes
        self.row_digits, self.end_digits = len(str(h - 1)), len(str(max(w - 1, 1)))
        self.max_finish = max(3, self.row_digits + 2, self.end_digits)
        """The largest :meth:`tokens_to_finish` of any state."""
        self.step = lru_cache(maxsize=None)(self._step)

    def _rows(self, s: AnchoredState) -> tuple[int, int]:
        """The rows the line being opened may start at: row 0 first, then after the previous line."""
        return (0, 0) if s.row < 0 else (s.row + 1, self.h - 1)

    def _step(self, s: AnchoredState, ch: str) -> AnchoredState | None:
        """The state after one character, or None if the character is not allowed."""
        if s.phase in ("start", "row"):
            lo, hi = self._rows(s)
            if ch in _DIGITS and _feasible(s.digits + ch, lo, hi):
                return AnchoredState(s.row, "row", digits=s.digits + ch)
            if ch == ":" and s.digits and lo <= int(s.digits) <= hi:
                return AnchoredState(int(s.digits), "code")
        elif s.phase == "code":
            if ch in self.codes:
                return AnchoredState(s.row, "end", 0, ch)
        elif s.phase == "end":
            lo, hi = s.col + 1, self.w - 1  # an end must leave room for the final run
            if ch in _DIGITS and _feasible(s.digits + ch, lo, hi):
                return AnchoredState(s.row, "end", s.col, s.code, s.digits + ch)
            if ch in self.codes and s.digits and ch != s.code and lo <= int(s.digits) <= hi:
                return AnchoredState(s.row, "end", int(s.digits), ch)
            if ch == "\n" and not s.digits and s.row < self.h - 1:
                return AnchoredState(s.row, "start")
        return None

    def complete(self, s: AnchoredState) -> bool:
        """Whether the text so far is a whole mask (the answer may end here)."""
        return s.phase == "end" and not s.digits

    def tokens_to_finish(self, s: AnchoredState) -> int:
        """An upper bound on the single-character tokens needed to complete the mask from ``s``."""
        if s.phase == "start":  # a row index, ":" and a code
            return 3 if s.row < 0 else self.row_digits + 2
        if s.phase == "row":
            return self.row_digits - len(s.digits) + 2
        if s.phase == "code":
            return 1
        return self.end_digits - len(s.digits) + 1 if s.digits else 0


class AnchoredLogitsProcessor(RLELogitsProcessor):
    """A ``LogitsProcessor`` that keeps every generated answer a valid anchored mask text (same
    arguments and methods as :class:`~magseg_ray.rle.constrained.RLELogitsProcessor`)."""

    grammar_class = AnchoredGrammar
