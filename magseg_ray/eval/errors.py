"""Where object F1 is lost: each unmatched piece and each unmatched truth field, given its cause.

Object F1 (:func:`~magseg_ray.eval.metrics.object_metrics`) counts a piece and a truth field as a
match when their IoU exceeds 0.5, one to one. Every other piece is a false positive and every other
truth field a false negative. This module says why, from the same overlap table. A piece *holds* a
truth field when it covers more than half of that field's pixels (so at most one piece holds a field).
The causes, first rule that applies:

False positives (unmatched pieces):

- ``small``: smaller than ``small_px`` pixels, too small to be a field (Fields of The World's
  default minimum is 500 m²);
- ``merged``: it holds two or more truth fields (their shared edge was not drawn);
- ``shape``: it holds one truth field, yet spills over so far that the IoU stays <= 0.5;
- ``outside``: most of its pixels lie in no truth field (trees, pasture, farmyards, roads);
- ``split``: it lies mostly in truth fields but holds none: a piece of a field cut in two or more.

False negatives (unmatched truth fields):

- ``missed``: the map's pieces cover no more than half of the field;
- ``merged``: a piece holds it and another truth field too;
- ``split``: the pieces cover at least half of it, but none holds it;
- ``shape``: one piece holds it alone, and spills over (IoU <= 0.5).

Sizes are binned by :data:`SIZE_BINS_M2` (a piece's area, or the truth field's), in m² from the
pixel size. :func:`error_picture` draws the kinds in :data:`COLOURS`.
"""

from __future__ import annotations

import numpy as np

from magseg_ray.eval.metrics import _overlaps, match_objects

FP_CAUSES = ("small", "merged", "shape", "outside", "split")
"""Causes of a false positive, in the order they are tested."""
FN_CAUSES = ("missed", "merged", "split", "shape")
"""Causes of a false negative, in the order they are tested."""
SIZE_BINS_M2 = (100.0, 500.0, 2_000.0, 10_000.0)
"""Upper edges of the size bins (m²); the last bin is everything above the last edge."""
SMALL_M2 = 500.0
"""Default ``small`` threshold (m²): Fields of The World's default minimum field size."""
COLOURS = {"match": (40, 170, 60), "small": (250, 220, 30), "merged": (220, 30, 30), "outside": (160, 60, 200),
           "split": (255, 140, 0), "shape": (40, 120, 255), "missed": (255, 255, 255)}
"""RGB of each kind in :func:`error_picture`: pieces filled, unmatched truth fields outlined."""


def size_labels() -> list[str]:
    """Names of the size bins, e.g. ``"<100"``, ``"100-500"``, ``">=10000"`` (m²)."""
    edges = [0.0, *SIZE_BINS_M2]
    return [f"<{edges[1]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[1:-1], edges[2:])] + [f">={edges[-1]:g}"]


def classify_errors(pred_instances: np.ndarray, truth_instances: np.ndarray, small_px: float,
                    iou_threshold: float = 0.5) -> tuple[dict, dict]:
    """The kind of every piece and every truth field: ``({pred id: kind}, {truth id: kind})``, ids
    as in the rasters, kind ``"match"`` or a cause of the module docstring."""
    o = _overlaps(pred_instances, truth_instances)
    pred_ids, truth_ids = np.unique(pred_instances), np.unique(truth_instances)
    pred_ids, truth_ids = pred_ids[pred_ids > 0], truth_ids[truth_ids > 0]
    table, n_truth, n_pred = o.table, o.table.shape[0] - 1, o.table.shape[1]
    matches = match_objects(o.pair_iou(), iou_threshold) if n_truth and n_pred else []
    holds = table[1:] * 2 > o.truth_area[1:, None]  # n_truth x n_pred: piece j holds truth field i
    held_by = holds.sum(0)  # truth fields each piece holds
    pred_kind = np.array(["match"] * n_pred, dtype=object)
    truth_kind = np.array(["match"] * n_truth, dtype=object)
    matched_pred = {p for _, p in matches}
    matched_truth = {t for t, _ in matches}
    for j in range(n_pred):
        if j in matched_pred:
            continue
        if o.pred_area[j] < small_px:
            pred_kind[j] = "small"
        elif held_by[j]:
            pred_kind[j] = "merged" if held_by[j] >= 2 else "shape"
        else:
            pred_kind[j] = "outside" if 2 * table[0, j] >= o.pred_area[j] else "split"
    covered = table[1:].sum(1)
    for i in range(n_truth):
        if i in matched_truth:
            continue
        holders = np.flatnonzero(holds[i])
        if 2 * covered[i] <= o.truth_area[i + 1]:
            truth_kind[i] = "missed"
        elif not len(holders):
            truth_kind[i] = "split"
        else:
            truth_kind[i] = "merged" if held_by[holders].max() >= 2 else "shape"
    return dict(zip(pred_ids.tolist(), pred_kind.tolist())), dict(zip(truth_ids.tolist(), truth_kind.tolist()))


def _by_size(kinds: dict, areas_m2: dict, causes: tuple) -> dict:
    """``{cause: {size bin: count}}`` plus ``total`` per cause, matches left out."""
    labels = size_labels()
    out = {c: dict.fromkeys(labels, 0) | {"total": 0} for c in causes}
    for i, kind in kinds.items():
        if kind == "match":
            continue
        b = labels[int(np.searchsorted(SIZE_BINS_M2, areas_m2[i], side="right"))]
        out[kind][b] += 1
        out[kind]["total"] += 1
    return out


def error_breakdown(pred_instances: np.ndarray, truth_instances: np.ndarray, pixel_m2: float,
                    small_m2: float = SMALL_M2, iou_threshold: float = 0.5) -> dict:
    """False positives and false negatives by cause and by size (m²; ``pixel_m2`` is one pixel's area).

    ``{"false_positives": {cause: {size bin: n, "total": n}}, "false_negatives": {...}, "tp": n,
    "fp": n, "fn": n, "pieces": n, "truth_fields": n, "pieces_per_truth_field": x, "small_m2": s}``;
    ``tp``, ``fp`` and ``fn`` are those of :func:`~magseg_ray.eval.metrics.object_metrics`.
    """
    pred_kind, truth_kind = classify_errors(pred_instances, truth_instances, small_m2 / pixel_m2, iou_threshold)
    pred_area = _areas(pred_instances, pixel_m2)
    truth_area = _areas(truth_instances, pixel_m2)
    tp = sum(k == "match" for k in pred_kind.values())
    return {"false_positives": _by_size(pred_kind, pred_area, FP_CAUSES),
            "false_negatives": _by_size(truth_kind, truth_area, FN_CAUSES),
            "tp": tp, "fp": len(pred_kind) - tp, "fn": len(truth_kind) - tp, "pieces": len(pred_kind),
            "truth_fields": len(truth_kind),
            "pieces_per_truth_field": len(pred_kind) / len(truth_kind) if truth_kind else None,
            "small_m2": small_m2}


def _areas(instances: np.ndarray, pixel_m2: float) -> dict:
    ids, counts = np.unique(instances, return_counts=True)
    return {int(i): float(c) * pixel_m2 for i, c in zip(ids, counts) if i > 0}


def add_breakdowns(total: dict, part: dict) -> dict:
    """Two breakdowns of :func:`error_breakdown` summed (scenes pooled), as a new dict."""
    out = {k: total[k] + part[k] for k in ("tp", "fp", "fn", "pieces", "truth_fields")}
    for side in ("false_positives", "false_negatives"):
        out[side] = {c: {b: total[side][c][b] + part[side][c][b] for b in part[side][c]} for c in part[side]}
    out["pieces_per_truth_field"] = out["pieces"] / out["truth_fields"] if out["truth_fields"] else None
    out["small_m2"] = part["small_m2"]
    return out


def error_picture(path, image: np.ndarray | None, pred_instances: np.ndarray, truth_instances: np.ndarray,
                  pixel_m2: float, small_m2: float = SMALL_M2, title: str = "") -> None:
    """A PNG of the kinds: each piece filled in its kind's colour (:data:`COLOURS`) over the image
    (darkened; grey if ``image`` is None), each unmatched truth field outlined in its cause's colour,
    matched truth fields outlined in green; a legend with the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from scipy import ndimage

    pred_kind, truth_kind = classify_errors(pred_instances, truth_instances, small_m2 / pixel_m2)
    base = np.full(pred_instances.shape + (3,), 90.0) if image is None else image[..., :3].astype(float)
    canvas = base * 0.45
    lookup = np.zeros((int(pred_instances.max()) + 1, 3))
    for i, kind in pred_kind.items():
        lookup[i] = COLOURS[kind]
    piece = pred_instances > 0
    canvas[piece] = 0.4 * canvas[piece] + 0.6 * lookup[pred_instances[piece]]
    edges = truth_instances != ndimage.grey_erosion(truth_instances, size=3)
    edges &= truth_instances > 0
    t_lookup = np.zeros((int(truth_instances.max()) + 1, 3))
    for i, kind in truth_kind.items():
        t_lookup[i] = COLOURS[kind]
    canvas[edges] = t_lookup[truth_instances[edges]]
    h, w = pred_instances.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w + 1.2))
    ax.imshow(canvas.clip(0, 255).astype(np.uint8), interpolation="nearest")
    ax.axis("off")
    count = lambda kinds, k: sum(v == k for v in kinds.values())  # noqa: E731
    handles = [Patch(color=np.array(COLOURS["match"]) / 255, label=f"matched {count(pred_kind, 'match')}")]
    handles += [Patch(color=np.array(COLOURS[c]) / 255, label=f"piece {c} {count(pred_kind, c)}") for c in FP_CAUSES]
    handles += [Patch(edgecolor=np.array(COLOURS[c]) / 255, facecolor="none", label=f"field {c} {count(truth_kind, c)}")
                for c in FN_CAUSES]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7, frameon=False)
    ax.set_title(title or f"{len(pred_kind)} pieces, {len(truth_kind)} truth fields", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
