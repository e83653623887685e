"""Boxes in image pixels, and GeoSeg's bias-aware refinement.

A box is ``(x1, y1, x2, y2)`` in pixels of the full image, ``x2``/``y2`` exclusive, so its width is
``x2 - x1``. :func:`clamp_box` puts a grounder's float box onto the integer pixel grid of an
image (outward: floor the start, ceil the end) and refuses one that keeps no pixel of it;
:func:`widen_box` applies the paper's asymmetric widening (alpha of the width/height toward the
top-left, beta toward the bottom-right, rounded outward, clipped to the image).
"""

from __future__ import annotations

import math

Box = tuple[int, int, int, int]

_EPS = 1e-9
"""Rounding slack, so that float noise (``0.1 * 30 == 3.0000000000000004``) does not add a pixel."""


def _floor(v: float) -> int:
    return math.floor(v + _EPS)


def _ceil(v: float) -> int:
    return math.ceil(v - _EPS)


def clamp_box(box, width: int, height: int) -> Box | None:
    """``box`` clipped to a ``width x height`` image on the integer grid, or None when nothing of it
    lies inside (then there is nothing to segment). Reversed corners are put in order first."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    x1, y1 = max(_floor(x1), 0), max(_floor(y1), 0)
    x2, y2 = min(_ceil(x2), width), min(_ceil(y2), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def widen_box(box: Box, width: int, height: int, alpha: float, beta: float) -> Box:
    """Widen a clamped box by ``alpha`` x its width/height up and left and ``beta`` down and right."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return (max(_floor(x1 - alpha * w), 0), max(_floor(y1 - alpha * h), 0),
            min(_ceil(x2 + beta * w), width), min(_ceil(y2 + beta * h), height))


def box_area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
