"""Anchored mask text: R-RLE's rows and runs, with every number a position on the patch.

Each line describes one group of identical consecutive rows and opens with the index of its first
row; its runs are a class code and the column where the run ends (absolute, exclusive)::

    text  := line ("\\n" line)*
    line  := ROW ":" RUNS         (ROW: decimal, the first row the line describes)
    RUNS  := run run ... run      (written back to back)
    run   := CODE [END]           (CODE: a class letter of the schema, END: decimal column)

A line holds until the next line's first row, the last line to the bottom of the patch; the first
line starts at row 0. Every run but the last of a line carries its end; the last one fills the rest
of the row. ``"0:f20e22b\\n12:b"`` is rows 0-11 field to column 20, boundary to 22, then background,
and rows 12-31 background (32x32). Unlike R-RLE's lengths and ``N*`` repeats, no number needs
arithmetic over earlier text: each is a row or column the model can read off the image.

:func:`encode` writes the canonical (unique) text of a mask; :func:`decode` reads any text back,
repairing what it must in non-strict mode, or raising :class:`~magseg_ray.errors.MaskTextError` on
the first problem in strict mode. Repairs are counted in R-RLE's
:class:`~magseg_ray.rle.codec.DecodeReport`, each under its nearest counter:

- ``short_rows``: a last run whose end falls short of the row width (its class is extended);
- ``long_rows``: an end beyond the row width (truncated), or a last run with no room left;
- ``unknown_classes``: a letter that is no code of the schema (decoded as background);
- ``syntax_errors``: skipped characters, empty lines, a line without runs (dropped), a missing row
  index or ``:`` (a line without an index starts one row after the previous line's), numbers with
  leading zeros, a run other than the last without its end (one pixel wide), an end not after
  the previous one (the run is dropped), and a line whose row does not come after the previous
  line's (dropped);
- ``extra_rows``: a line whose first row lies beyond the patch height (dropped; one per line);
- ``missing_rows``: rows above the first line (filled with its row), or every row for no text.
"""

from __future__ import annotations

import re

import numpy as np

from magseg_ray.masks.schemas import Schema, get_schema
from magseg_ray.rle.codec import DecodeReport, Decoder, checked_mask, parse_number, row_runs

# A line's head: the row index and the ':' (either may be missing).
_HEAD = re.compile(r"(\d*)(:?)")
# One token after the head: a run ("f12" or "f") or junk. Groups: code, end, junk.
_TOKEN = re.compile(r"([A-Za-z])(\d*)|(\d+|[^A-Za-z\d]+)")

Run = tuple[int, int | None]
"""A parsed run: its class and its end column (None: to the end of the row)."""


def encode(mask: np.ndarray, schema: str | Schema) -> str:
    """Canonical anchored text of a 2-D class mask.

    Consecutive identical rows form one line, opened by the group's first row; runs merge adjacent
    equal pixels and only the last run of a line omits its end, so each mask has exactly one text.
    """
    schema = get_schema(schema)
    m = checked_mask(mask, schema)
    new_group = np.ones(m.shape[0], dtype=bool)
    new_group[1:] = (m[1:] != m[:-1]).any(axis=1)
    group_starts = np.flatnonzero(new_group).tolist()
    ri, values, lengths = row_runs(m[group_starts])
    codes = schema.codes
    lines: list[str] = []
    col = 0
    for i, (g, v, n) in enumerate(zip(ri, values, lengths)):
        if col == 0:
            lines.append(f"{group_starts[g]}:")
        col += n
        if i + 1 < len(ri) and ri[i + 1] == g:
            lines[-1] += f"{codes[v]}{col}"
        else:
            lines[-1] += codes[v]
            col = 0
    return "\n".join(lines)


def longest_text(h: int, w: int) -> int:
    """Characters of the longest canonical text of an ``h x w`` mask: every row its own line, every
    pixel its own run (the answer budget that never cuts a mask short)."""
    digits = lambda n: len(str(n))  # noqa: E731
    heads = sum(digits(r) + 1 for r in range(h))  # "ROW:"
    row = w + sum(digits(end) for end in range(1, w))  # codes and ends of one row
    return heads + h * row + h - 1  # newlines between lines


class _AnchoredDecoder(Decoder):
    """State of one :func:`decode` call (R-RLE's report and flagging, anchored lines and rows)."""

    def parse(self, line: str) -> tuple[int | None, list[Run]]:
        """First row (``None`` when the index is missing) and ``(class, end|None)`` runs of a line."""
        if not line:
            return None, []
        digits, colon = _HEAD.match(line).groups()
        if not digits or not colon:
            self.flag("syntax_errors", f"line does not open with its row index and ':' ({line[:8]!r})")
        if digits[:1] == "0" and len(digits) > 1:
            self.flag("syntax_errors", f"malformed row index {digits!r}")
        runs: list[Run] = []
        for code, end, junk in _TOKEN.findall(line[len(digits) + len(colon):]):
            if junk:
                self.flag("syntax_errors", f"unexpected {junk!r}")
                continue
            cls = self.lut.get(code)
            if cls is None:
                self.flag("unknown_classes", f"unknown class code {code!r} (schema "
                          f"{self.schema.name!r} has {', '.join(self.schema.codes)})")
                cls = 0
            if end[:1] == "0" and len(end) > 1:
                self.flag("syntax_errors", f"run {code}{end} has a malformed end")
            runs.append((cls, parse_number(end) if end else None))
        return (parse_number(digits) if digits else None), runs

    def row(self, runs: list[Run]) -> np.ndarray:
        """The ``w`` pixels of one row from its (non-empty) runs, repairing short and long rows."""
        w = self.w
        pixels = np.full(w, runs[0][0], dtype=np.uint8)
        col, last = 0, len(runs) - 1
        for i, (cls, end) in enumerate(runs):
            if end is None and i < last:
                self.flag("syntax_errors", "a run other than the last lacks its end")
                end = col + 1
            elif end is None and col >= w:
                self.flag("long_rows", f"the row of {w} pixels has no room for the last run")
                break
            elif end is None:
                end = w
            if end <= col:
                self.flag("syntax_errors", f"a run ends at column {end}, not after column {col}")
                continue
            if end > w:
                self.flag("long_rows", f"a run ends at column {end}, beyond the row width of {w} pixels")
                pixels[col:] = cls
                col = w
                break
            pixels[col:end] = cls
            col = end
        if col < w:
            self.flag("short_rows", f"row has {col} of {w} pixels")
            pixels[col:] = pixels[col - 1] if col else pixels[0]
        return pixels


def _anchors(dec: _AnchoredDecoder, text: str, h: int) -> list[tuple[int, np.ndarray]]:
    """``(first row, row pixels)`` of every line that is kept, in row order."""
    anchors: list[tuple[int, np.ndarray]] = []
    for start, runs in dec.lines(text):
        prev = anchors[-1][0] if anchors else -1
        start = prev + 1 if start is None else start
        if start <= prev:
            dec.flag("syntax_errors", f"row {start} does not come after row {prev} of the line before")
        elif start >= h:
            dec.flag("extra_rows", f"row {start} lies beyond the patch height {h}")
        else:
            anchors.append((start, dec.row(runs)))
    return anchors


def decode(
    text: str, h: int, w: int, schema: str | Schema, strict: bool = False
) -> tuple[np.ndarray, DecodeReport]:
    """Class mask of shape ``(h, w)`` from anchored text, and a report of the repairs made.

    Leading and trailing whitespace and carriage returns are ignored. Non-canonical but valid text
    (adjacent runs of one class, consecutive lines with equal rows, an end on the last run that
    exactly fills the row) is accepted without complaint. Otherwise, in strict mode the first
    problem raises :class:`MaskTextError` naming its line; in non-strict mode every string decodes
    to a valid mask, each repair counted in the returned report (see the module doc).
    """
    dec = _AnchoredDecoder(w, get_schema(schema), strict)
    mask = np.zeros((h, w), dtype=np.uint8)
    anchors = _anchors(dec, text, h)
    if not anchors:
        dec.flag("missing_rows", f"text describes none of the {h} rows", h, where="end of text")
    elif anchors[0][0] > 0:
        first = anchors[0][0]
        dec.flag("missing_rows", f"text starts at row {first}, not row 0", first, where="line 1")
    for i, (start, pixels) in enumerate(anchors):
        stop = anchors[i + 1][0] if i + 1 < len(anchors) else h
        mask[0 if i == 0 else start : stop] = pixels
    return mask, dec.report
