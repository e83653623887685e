"""Route masks -> one mask of the full image, by the paper's case table.

Each route answers a mask of the crop under the refined box (at any resolution: it is resized
nearest-neighbour to the crop) or None when it produced nothing (route A with no keypoint). A
route is *valid* when its mask covers at least ``gamma`` of the refined box's area. Then:

=============  =============  ==================================
route A        route B        result
=============  =============  ==================================
valid          valid          A AND B (intersection), ``both``
valid          invalid        A, ``points``
invalid        valid          B, ``text``
invalid        invalid        empty, ``none``
=============  =============  ==================================

A route the configuration switched off counts as invalid. The result is pasted into an all-False
mask of the image at the box, so nothing outside the refined box is ever set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magseg_ray.geoseg.boxes import Box, box_area

CASES = ("both", "points", "text", "none")
"""Names of the fusion outcomes: which routes made the mask."""


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask (output pixel centre -> source pixel)."""
    mask = np.asarray(mask)
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(int), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def valid(mask: np.ndarray | None, box: Box, gamma: float) -> bool:
    """Whether a crop mask (already at crop size) covers at least ``gamma`` of the box."""
    return mask is not None and mask.sum() > 0 and mask.sum() >= gamma * box_area(box)


@dataclass(frozen=True)
class Fused:
    """The fused full-image mask and which case of the table made it."""

    mask: np.ndarray
    case: str


def fuse(points: np.ndarray | None, text: np.ndarray | None, box: Box, shape: tuple[int, int],
         gamma: float) -> Fused:
    """Fuse route A (``points``) and route B (``text``) crop masks into a ``shape`` mask."""
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    a = None if points is None else resize_nearest(points, h, w).astype(bool)
    b = None if text is None else resize_nearest(text, h, w).astype(bool)
    ok_a, ok_b = valid(a, box, gamma), valid(b, box, gamma)
    out = np.zeros(shape, bool)
    if ok_a and ok_b:
        crop, case = a & b, "both"
    elif ok_a:
        crop, case = a, "points"
    elif ok_b:
        crop, case = b, "text"
    else:
        return Fused(out, "none")
    out[y1:y2, x1:x2] = crop
    return Fused(out, case)
