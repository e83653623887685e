"""Route A's point prompts: at most ``top_k`` NMS local maxima of a similarity map above ``tau``.

The map is CLIP Surgery's min-max normalised similarity at crop resolution (values in [0, 1]).
A pixel is a candidate when it equals the maximum of its ``(2r+1)``-pixel square (``r`` =
``nms_radius``) and is at least ``tau``. Candidates are taken by descending score (ties: the
earlier pixel in row-major order) and one is dropped when a kept point lies within ``r`` pixels
in both x and y (a plateau gives one point, not many), until ``top_k`` are kept. No candidate ->
no points -> route A is invalid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def select_points(similarity: np.ndarray, top_k: int, tau: float, nms_radius: int) -> list[tuple[int, int, float]]:
    """``(x, y, score)`` of the chosen keypoints, best first, in pixels of ``similarity``."""
    sim = np.nan_to_num(np.asarray(similarity, np.float64), nan=-np.inf)
    peak = ndimage.maximum_filter(sim, size=2 * nms_radius + 1, mode="constant", cval=-np.inf)
    ys, xs = np.nonzero((sim == peak) & (sim >= tau))
    order = np.lexsort((ys * sim.shape[1] + xs, -sim[ys, xs]))
    kept: list[tuple[int, int, float]] = []
    for i in order:
        x, y = int(xs[i]), int(ys[i])
        if all(abs(x - kx) > nms_radius or abs(y - ky) > nms_radius for kx, ky, _ in kept):
            kept.append((x, y, float(sim[y, x])))
            if len(kept) == top_k:
                break
    return kept
