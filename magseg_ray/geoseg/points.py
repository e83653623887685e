"""Route A's point prompts: at most ``top_k`` NMS local maxima of a similarity map above ``tau``.

The map is CLIP Surgery's min-max normalised similarity at crop resolution (values in [0, 1]).
A pixel is a candidate when it equals the maximum of its ``(2r+1)``-pixel square (``r`` =
``nms_radius``) and is at least ``tau``. A plateau (candidates of one value joined through
their 8 neighbours, however wide) is one peak, placed at its first pixel in row-major order.
Peaks are taken by descending score (ties: the earlier pixel in row-major order) and one is
dropped when a kept point lies within ``r`` pixels in both x and y, until ``top_k`` are kept.
No candidate -> no points -> route A is invalid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))
"""Half of the 8-neighbourhood (the other half is the same edges reversed)."""


def _plateau_peaks(candidates: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Flat indices of one pixel per plateau: its first in row-major order, ascending."""
    h, w = sim.shape
    index = np.arange(h * w).reshape(h, w)
    rows, cols = [], []
    for dy, dx in _NEIGHBOURS:
        a = (slice(0, h - dy), slice(max(-dx, 0), w - max(dx, 0)))
        b = (slice(dy, h), slice(max(dx, 0), w - max(-dx, 0)))
        joined = candidates[a] & candidates[b] & (sim[a] == sim[b])
        rows.append(index[a][joined])
        cols.append(index[b][joined])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(h * w, h * w))
    _, label = connected_components(graph, directed=False)
    flat = np.flatnonzero(candidates)
    _, first = np.unique(label[flat], return_index=True)
    return np.sort(flat[first])


def select_points(similarity: np.ndarray, top_k: int, tau: float, nms_radius: int) -> list[tuple[int, int, float]]:
    """``(x, y, score)`` of the chosen keypoints, best first, in pixels of ``similarity``."""
    sim = np.nan_to_num(np.asarray(similarity, np.float64), nan=-np.inf)
    peak = ndimage.maximum_filter(sim, size=2 * nms_radius + 1, mode="constant", cval=-np.inf)
    flat = _plateau_peaks((sim == peak) & (sim >= tau), sim)
    ys, xs = np.divmod(flat, sim.shape[1])
    order = np.lexsort((flat, -sim[ys, xs]))
    kept: list[tuple[int, int, float]] = []
    for i in order:
        x, y = int(xs[i]), int(ys[i])
        if all(abs(x - kx) > nms_radius or abs(y - ky) > nms_radius for kx, ky, _ in kept):
            kept.append((x, y, float(sim[y, x])))
            if len(kept) == top_k:
                break
    return kept
