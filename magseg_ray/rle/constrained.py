"""Constrained decoding: the model can only write R-RLE text that decodes strictly.

:class:`MaskGrammar` is a character-level automaton for canonical R-RLE text of an ``h x w`` mask
(see :mod:`magseg_ray.rle.codec`): codes from the schema, no two adjacent runs of one class, run
lengths that leave room for the final run, row counts ``2 <= N < rows left`` (the last group uses
the bare ``*``), and an end exactly after the last row. :class:`RLELogitsProcessor` lifts it to
tokens for ``model.generate``: at each step only tokens whose text keeps the answer a valid prefix
survive, and an end-of-answer token is allowed only once the mask is complete.

It is budget-aware: given ``max_new_tokens``, a token is allowed only if the answer can still be
completed within the budget afterwards (every tokenizer this project uses has single-character
tokens for digits, codes, ``*`` and newline), so an answer is never cut off mid-mask. The one
thing the grammar does not force is merging identical consecutive rows into one ``N*`` line; such
text still decodes strictly.

:meth:`RLELogitsProcessor.by_kind` serves kind-first greedy decoding: numbers are many tokens
(``"3"``, ``"14"``, ``"27"``), so when a model is fairly sure a run length comes next but not which
one, their probability is spread thin and plain greedy decoding ends the line or the answer
instead, writing whole-row and whole-patch masks. Deciding the *kind* of the next piece first (a
number, ``*``, a newline, one class code, or the end) by its total probability, then the most
probable token of that kind, follows what the model believes about the mask's structure.

Works with any Hugging Face tokenizer: candidate tokens are those whose vocabulary string consists
only of characters of the mask alphabet; everything else (words, spaces, specials) is masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from magseg_ray.masks.schemas import Schema, get_schema

_DIGITS = "0123456789"

_ALLOWED: dict[tuple, dict] = {}
"""Allowed token ids by grammar and vocabulary, then by ``(state, budget)`` (see
:class:`RLELogitsProcessor`). It grows with the states answers reach: 5,018 after 16 demo chips of
32 px patches, against 837,367 states a 32 px R-RLE grammar can reach, at about 190 bytes each."""
_ALLOWED_LIMIT = 100_000
"""States kept per grammar (about 20 MB); past it the cache starts over, so a country-wide run's
model actor does not grow without bound."""


@dataclass(frozen=True)
class State:
    """Where an answer is in the grammar."""

    rows_done: int = 0
    """Rows completed by finished lines."""
    phase: str = "start"
    """``start`` (line start), ``count`` (typing N of ``N*``), ``code`` (a run code is due),
    ``len`` (after a code: its length digits, next code, newline or end), ``done``."""
    count: int = 1
    """Rows the current line stands for."""
    col: int = 0
    """Pixels of the current row covered by runs with a length."""
    code: str = ""
    """The current (last written) run code."""
    digits: str = ""
    """Digits typed for the current count or run length."""


def _prefix_feasible(digits: str, lo: int, hi: int) -> bool:
    """Whether some integer in ``[lo, hi]`` has decimal form starting with ``digits``."""
    if not digits or digits[0] == "0" or hi < lo:
        return False
    v, span = int(digits), 1
    while v <= hi:
        if v + span - 1 >= lo:
            return True
        v, span = v * 10, span * 10
    return False


class MaskGrammar:
    """Valid prefixes of canonical R-RLE text for an ``h x w`` mask of ``schema``."""

    symbols = "*\n"
    """The characters of the text besides digits and class codes."""
    start = State()
    """The state of an empty answer."""
    done = State(phase="done")
    """The state after the end of the answer."""
    max_finish = 6
    """The largest :meth:`tokens_to_finish` of any state."""

    def __init__(self, h: int, w: int, schema: str | Schema):
        self.h, self.w = h, w
        self.codes = get_schema(schema).codes
        self.step = lru_cache(maxsize=None)(self._step)

    def _step(self, s: State, ch: str) -> State | None:
        """The state after one character, or None if the character is not allowed."""
        h, w = self.h, self.w
        rem = h - s.rows_done
        if s.phase == "start":
            if ch in _DIGITS and _prefix_feasible(ch, 2, rem - 1):
                return State(s.rows_done, "count", digits=ch)
            if ch == "*" and rem >= 2:
                return State(s.rows_done, "code", count=rem)
            if ch in self.codes:
                return State(s.rows_done, "len", count=1, code=ch)
        elif s.phase == "count":
            if ch in _DIGITS and _prefix_feasible(s.digits + ch, 2, rem - 1):
                return State(s.rows_done, "count", digits=s.digits + ch)
            if ch == "*" and 2 <= int(s.digits) <= rem - 1:
                return State(s.rows_done, "code", count=int(s.digits))
        elif s.phase == "code":
            if ch in self.codes and ch != s.code:
                return State(s.rows_done, "len", s.count, s.col, ch)
        elif s.phase == "len":
            room = w - s.col - 1  # a length must leave room for the final run
            if ch in _DIGITS and _prefix_feasible(s.digits + ch, 1, room):
                return State(s.rows_done, "len", s.count, s.col, s.code, s.digits + ch)
            if ch in self.codes and s.digits and ch != s.code:
                return State(s.rows_done, "len", s.count, s.col + int(s.digits), ch)
            if ch == "\n" and not s.digits and s.rows_done + s.count < h:
                return State(s.rows_done + s.count)
        return None

    def complete(self, s: State) -> bool:
        """Whether the text so far is a whole mask (the answer may end here)."""
        return s.phase == "len" and not s.digits and s.rows_done + s.count == self.h

    def tokens_to_finish(self, s: State) -> int:
        """An upper bound on the single-character tokens needed to complete the mask from ``s``."""
        rem = self.h - s.rows_done

        def line_end(rows_after: int) -> int:  # newline, then "*" + code or a one-row line
            return 0 if rows_after <= 0 else 1 + min(rows_after, 2)

        if s.phase == "start":
            return min(rem, 2)
        if s.phase == "count":  # at worst one more digit, "*", a code, then the line end
            return 6
        after = rem - s.count
        if s.phase == "code":
            return 1 + line_end(after)
        return (1 if s.digits else 0) + line_end(after)


class RLELogitsProcessor:
    """A ``LogitsProcessor`` that keeps every generated answer a valid R-RLE mask text.

    ``prompt_len`` is the (padded) prompt length, so the answer of row ``i`` is
    ``input_ids[i, prompt_len:]``. ``max_new_tokens`` enables the budget rule (see module doc).
    Another text format subclasses it with its own ``grammar_class`` (same interface as
    :class:`MaskGrammar`: ``symbols``, ``start``, ``done``, ``max_finish``, ``step``, ``complete``,
    ``tokens_to_finish``), e.g. :class:`~magseg_ray.rle.anchored_grammar.AnchoredLogitsProcessor`.
    """

    grammar_class = MaskGrammar

    def __init__(self, tokenizer, h: int, w: int, schema: str | Schema, prompt_len: int,
                 eos_token_ids: list[int], max_new_tokens: int | None = None):
        self.grammar = self.grammar_class(h, w, schema)
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.eos_set = set(eos_token_ids)
        self.eos = torch.tensor(sorted(self.eos_set))
        alphabet = set(_DIGITS + self.grammar.codes + self.grammar.symbols)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.candidates = [(i, p) for i, p in enumerate(pieces) if p and set(p) <= alphabet]
        self.pieces = dict(self.candidates)
        self._trie: dict = {}  # character -> (ids of the tokens spelled so far, deeper trie)
        for i, piece in self.candidates:
            node = self._trie
            for ch in piece[:-1]:
                node = node.setdefault(ch, ([], {}))[1]
            node.setdefault(piece[-1], ([], {}))[0].append(i)
        self._states: dict[int, tuple[int, State]] = {}
        # allowed token ids depend only on the grammar and the vocabulary, so every processor of
        # the same kind shares them: a model actor's later calls find the states already worked out
        key = (type(self), h, w, get_schema(schema).name, tuple(self.candidates), tuple(sorted(self.eos_set)))
        self._known = _ALLOWED.setdefault(key, {})
        self._kinds_of = lru_cache(maxsize=None)(self._kinds_for)
        # the kind of each token for by_kind: 0 a number, then each symbol (R-RLE: "*", newline), then
        # the class codes, and last the end of the answer (with every token the grammar never allows)
        firsts = self.grammar.symbols + self.grammar.codes
        self.n_kinds = len(firsts) + 2
        self.kinds = torch.full((len(pieces),), self.n_kinds - 1, dtype=torch.long)
        for i, piece in self.candidates:
            self.kinds[i] = 0 if piece[0] in _DIGITS else 1 + firsts.index(piece[0])
        boundary = get_schema(schema).boundary_class
        self.boundary_kind = None if boundary is None else 1 + firsts.index(self.grammar.codes[boundary])
        """The kind that starts a boundary run (None for a schema without a boundary class)."""

    def advance(self, s, text: str):
        for ch in text:
            s = self.grammar.step(s, ch)
            if s is None:
                return None
        return s

    def _allowed_ids(self, s, budget: int | None) -> torch.Tensor:
        """Token ids allowed in state ``s`` with ``budget`` tokens left (None: no limit). A complete
        mask may still go on: after the ``*f`` of ``*f14b4f`` the answer may end or write a length.
        Walks the token trie, so a character the grammar refuses rules out every token it starts."""
        if s.phase == "done":
            return self.eos
        ids = self.eos.tolist() if self.grammar.complete(s) else []
        stack = [(s, self._trie)]
        while stack:
            state, node = stack.pop()
            for ch, (tokens, deeper) in node.items():
                nxt = self.grammar.step(state, ch)
                if nxt is None:
                    continue
                # the token, the rest of the mask, and the end token must fit the budget
                if tokens and (budget is None or 2 + self.grammar.tokens_to_finish(nxt) <= budget):
                    ids.extend(tokens)
                if deeper:
                    stack.append((nxt, deeper))
        if not ids and budget is not None:  # budget too small from the start: ignore it
            return self._allowed(s, None)
        return torch.tensor(sorted(ids), dtype=torch.long)

    def _allowed(self, s, budget: int | None) -> torch.Tensor:
        ids = self._known.get((s, budget))
        if ids is None:
            if len(self._known) >= _ALLOWED_LIMIT:
                self._known.clear()
            ids = self._known[(s, budget)] = self._allowed_ids(s, budget)
        return ids

    def allowed(self, s, budget: int | None) -> torch.Tensor:
        # a budget that leaves room for the longest finish and the end constrains nothing: share the cache
        return self._allowed(s, None if budget is None or budget >= self.grammar.max_finish + 2 else budget)

    def state_of(self, row: int, answer: list[int]):
        """State of one row's answer, advanced incrementally from the previous call."""
        start, done = self.grammar.start, self.grammar.done
        n, s = self._states.get(row, (0, start))
        if n > len(answer):
            n, s = 0, start
        for tok in answer[n:]:
            if s.phase == "done" or tok in self.eos_set:
                s = done
            else:
                s = self.advance(s, self.pieces[tok]) or done
        self._states[row] = (len(answer), s)
        return s

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n_new = input_ids.shape[1] - self.prompt_len
        budget = None if self.max_new_tokens is None else self.max_new_tokens - n_new
        out = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            s = self.state_of(row, input_ids[row, self.prompt_len:].tolist())
            allowed = self.allowed(s, budget)
            out[row, allowed] = scores[row, allowed]
        return out

    def _kinds_for(self, width: int, device) -> torch.Tensor:
        """Kinds of token ids ``0..width-1`` on ``device`` (model vocabularies may be padded past the
        tokenizer's; the padding is never allowed). Cached: it runs at every decoding step."""
        pad = self.kinds.new_full((max(width - len(self.kinds), 0),), self.n_kinds - 1)
        return torch.cat([self.kinds, pad])[:width].to(device)

    def by_kind(self, scores: torch.Tensor, boundary_bias: float = 1.0) -> torch.Tensor:
        """Constrained ``scores`` (``b x vocab``, from :meth:`__call__`) with only the tokens of each
        row's most probable kind left (see module doc); the argmax of the result is the kind-first
        greedy choice. ``boundary_bias`` multiplies the probability of starting a boundary run in
        that choice (> 1 draws more boundary: a reader that takes the most likely class under-draws
        a rare one)."""
        kinds = self._kinds_of(scores.shape[1], scores.device).expand_as(scores)
        mass = scores.new_zeros(scores.shape[0], self.n_kinds).scatter_add_(1, kinds, torch.softmax(scores, -1))
        if boundary_bias != 1.0 and self.boundary_kind is not None:
            mass[:, self.boundary_kind] *= boundary_bias
        return scores.masked_fill(kinds != mass.argmax(1, keepdim=True), float("-inf"))
