"""R-RLE: the row-wise run-length text a model writes for a class mask.

Each line of the text describes one row, or several identical consecutive rows::

    line  := [COUNT "*"] RUNS | "*" RUNS
    RUNS  := run run ... run      (written back to back)
    run   := CODE [LENGTH]        (CODE: a class letter of the schema, LENGTH: decimal >= 1)

``COUNT*`` (COUNT >= 2) makes the line stand for COUNT identical rows; a bare leading ``*`` repeats
it for all remaining rows of the patch. Every run but the last of a line carries a length; the last
one fills the rest of the row. A 4x4 ``fields3`` mask with two rows ``f f e b`` over two background
rows is ``"2*f2e1b\\n*b"``.

:func:`encode` writes the canonical (unique) text of a mask; :func:`decode` reads any text back,
repairing what it must in non-strict mode (see :class:`DecodeReport`), or raising
:class:`~magseg_ray.errors.MaskTextError` on the first problem in strict mode. The anchored format
(:mod:`magseg_ray.rle.anchored`) builds on the same pieces: :func:`checked_mask`, :func:`row_runs`,
:func:`parse_number` and the line decoder's state, :class:`Decoder`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from magseg_ray.errors import MaskTextError, SchemaError
from magseg_ray.masks.schemas import Schema, get_schema

# One token of a line: a row-count prefix ("12*" or "*"), a run ("f12" or "f"), or junk
# (stray digits, or characters that fit no rule). Groups: count, code, length, junk.
_TOKEN = re.compile(r"(\d*)\*|([A-Za-z])(\d*)|(\d+|[^A-Za-z\d*]+)")


_BIG = 10**9
"""Stand-in for numbers too long to matter (and too long for ``int`` to parse safely)."""


def parse_number(digits: str) -> int:
    """Value of a decimal string, capped at ``_BIG``."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) < 10 else _BIG


@dataclass
class DecodeReport:
    """How many repairs the non-strict decoder made; all zero for well-formed text."""

    short_rows: int = 0
    """Lines whose runs cover fewer than ``w`` pixels (the last run's class was extended)."""
    long_rows: int = 0
    """Lines whose runs cover more than ``w`` pixels (truncated at ``w``)."""
    unknown_classes: int = 0
    """Runs whose letter is no code of the schema (decoded as background)."""
    syntax_errors: int = 0
    """Skipped characters, empty lines, zero run lengths and malformed numbers."""
    extra_rows: int = 0
    """Rows described beyond the patch height (dropped)."""
    missing_rows: int = 0
    """Rows the text did not describe (filled by repeating the last decoded row)."""

    @property
    def ok(self) -> bool:
        """True when the text needed no repair."""
        return not any(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict, e.g. for metric logging."""
        return asdict(self)


def row_runs(rows: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Runs of equal values along each row of a non-empty 2-D array, in row-major order.

    Returns three equally long lists: the row index, the value and the length of each run.
    """
    h, w = rows.shape
    starts = np.ones(rows.shape, dtype=bool)
    starts[:, 1:] = rows[:, 1:] != rows[:, :-1]
    ri, ci = np.nonzero(starts)
    flat = ri * w + ci
    # Every row starts a run at column 0, so the next run's flat start ends the current run.
    lengths = np.diff(flat, append=h * w)
    return ri.tolist(), rows[ri, ci].tolist(), lengths.tolist()


def checked_mask(mask: np.ndarray, schema: Schema) -> np.ndarray:
    """``mask`` as a validated, non-empty 2-D uint8 class mask."""
    m = schema.check_mask(mask)
    if m.size == 0:
        raise SchemaError(f"mask: cannot encode an empty mask of shape {m.shape}")
    return m


def encode(mask: np.ndarray, schema: str | Schema) -> str:
    """Canonical R-RLE text of a 2-D class mask.

    Consecutive identical rows form a group, written ``"N*RUNS"`` (``N >= 2``) or ``"RUNS"``; the
    last group is written ``"*RUNS"`` when it covers two rows or more. Runs merge adjacent equal
    pixels, and only the last run of a line omits its length, so each mask has exactly one text.
    """
    schema = get_schema(schema)
    m = checked_mask(mask, schema)
    h = m.shape[0]
    new_group = np.ones(h, dtype=bool)
    new_group[1:] = (m[1:] != m[:-1]).any(axis=1)
    group_starts = np.flatnonzero(new_group)
    group_rows = np.diff(group_starts, append=h).tolist()
    ri, values, lengths = row_runs(m[group_starts])
    codes = schema.codes
    n_groups = len(group_rows)
    lines: list[str] = []
    parts: list[str] = []
    for i, (g, v, n) in enumerate(zip(ri, values, lengths)):
        if i + 1 < len(ri) and ri[i + 1] == g:
            parts.append(f"{codes[v]}{n}")
            continue
        parts.append(codes[v])
        rows = group_rows[g]
        prefix = "" if rows == 1 else "*" if g == n_groups - 1 else f"{rows}*"
        lines.append(prefix + "".join(parts))
        parts = []
    return "\n".join(lines)


def longest_text(h: int, w: int) -> int:
    """An upper bound on the characters of the canonical text of an ``h x w`` mask (every pixel its
    own run of length 1, every row its own line: ``2 h w - 1``), the answer budget that never cuts a
    mask short."""
    return 2 * h * w


def encode_text4seg(mask: np.ndarray, schema: str | Schema) -> str:
    """Text4Seg-style encoding, the verbose baseline R-RLE is benchmarked against.

    Each row is written as its runs ``"{class_name} *{N}"`` joined by ``"| "``; rows are joined by
    newlines, without any merging of repeated rows. There is no decoder for it.
    """
    schema = get_schema(schema)
    m = checked_mask(mask, schema)
    names = schema.names
    rows: list[list[str]] = [[] for _ in range(m.shape[0])]
    for r, v, n in zip(*row_runs(m)):
        rows[r].append(f"{names[v]} *{n}")
    return "\n".join("| ".join(runs) for runs in rows)


class Decoder:
    """State of one :func:`decode` call: the report, and where problems are flagged."""

    def __init__(self, w: int, schema: Schema, strict: bool) -> None:
        self.w = w
        self.schema = schema
        self.strict = strict
        self.lut = {c: i for i, c in enumerate(schema.codes)}
        self.report = DecodeReport()
        self.line_no = 0

    def flag(self, kind: str, msg: str, n: int = 1, where: str | None = None) -> None:
        """Count ``n`` repairs of ``kind``; in strict mode raise, naming ``where`` (or the line)."""
        if self.strict:
            raise MaskTextError(f"{where or f'line {self.line_no}'}: {msg}")
        setattr(self.report, kind, getattr(self.report, kind) + n)

    def lines(self, text: str):
        """:meth:`parse` of each line of ``text`` (outer whitespace and carriage returns dropped) that
        has runs, numbering lines in ``line_no``; a line without runs is flagged and skipped."""
        text = text.replace("\r", "").strip()
        for self.line_no, line in enumerate(text.split("\n") if text else [], start=1):
            head, runs = self.parse(line)
            if runs:
                yield head, runs
            else:
                self.flag("syntax_errors", "line has no runs")

    def parse(self, line: str) -> tuple[int | None, list[tuple[int, int | None]]]:
        """Row count (``None``: all remaining rows) and ``(class, length|None)`` runs of a line."""
        count: int | None = 1
        prefixed = False
        runs: list[tuple[int, int | None]] = []
        for digits, code, length, junk in _TOKEN.findall(line):
            if junk:
                self.flag("syntax_errors", f"unexpected {junk!r}")
            elif not code:
                if prefixed or runs:
                    self.flag("syntax_errors", "'*' is only allowed once, at the start of a line")
                    continue
                prefixed = True
                if digits[:1] == "0":
                    self.flag("syntax_errors", f"malformed row count {digits!r}")
                count = max(parse_number(digits), 1) if digits else None
            else:
                cls = self.lut.get(code)
                if cls is None:
                    self.flag("unknown_classes", f"unknown class code {code!r} (schema "
                              f"{self.schema.name!r} has {', '.join(self.schema.codes)})")
                    cls = 0
                if length[:1] == "0":
                    self.flag("syntax_errors", f"run {code}{length} has a malformed length")
                    if not parse_number(length):
                        continue
                runs.append((cls, parse_number(length) if length else None))
        return count, runs

    def row(self, runs: list[tuple[int, int | None]]) -> np.ndarray:
        """The ``w`` pixels of one row from its (non-empty) runs, repairing short and long rows."""
        w = self.w
        classes: list[int] = []
        lengths: list[int] = []
        used = 0
        last = len(runs) - 1
        for i, (cls, n) in enumerate(runs):
            room = w - used
            if n is None and i == last:
                if room <= 0:
                    self.flag("long_rows", f"the row of {w} pixels has no room for the last run")
                    break
                n = room
            elif n is None:
                self.flag("syntax_errors", "a run other than the last lacks its length")
                n = 1
            if n > room:
                self.flag("long_rows", f"runs exceed the row width of {w} pixels")
                if room > 0:
                    classes.append(cls)
                    lengths.append(room)
                used = w
                break
            classes.append(cls)
            lengths.append(n)
            used += n
        if used < w:
            self.flag("short_rows", f"row has {used} of {w} pixels")
            lengths[-1] += w - used
        return np.repeat(np.array(classes, dtype=np.uint8), lengths)


def decode(
    text: str, h: int, w: int, schema: str | Schema, strict: bool = False
) -> tuple[np.ndarray, DecodeReport]:
    """Class mask of shape ``(h, w)`` from R-RLE text, and a report of the repairs made.

    Leading and trailing whitespace and carriage returns are ignored. Non-canonical but valid text
    (adjacent runs of one class, a ``1*`` prefix, an explicit count on the last line, a length on
    the last run that exactly fills the row) is accepted without complaint. Otherwise, in strict
    mode the first problem raises :class:`MaskTextError` naming its line; in non-strict mode every
    string decodes to a valid mask: each line only ever fills its own rows, and each repair is
    counted in the returned :class:`DecodeReport` (see its fields).
    """
    dec = Decoder(w, get_schema(schema), strict)
    mask = np.zeros((h, w), dtype=np.uint8)
    row = 0
    for count, runs in dec.lines(text):
        left = h - row
        n = left if count is None else count
        if n > left or left == 0:
            extra = max(n - left, 1)
            dec.flag("extra_rows", f"{extra} row(s) beyond the patch height {h}", extra)
            n = left
        if n > 0:
            mask[row : row + n] = dec.row(runs)
            row += n
    if row < h:
        dec.flag("missing_rows", f"text has {row} of {h} rows", h - row, where="end of text")
        if row:
            mask[row:] = mask[row - 1]
    return mask, dec.report
