"""Mask metrics: per-class pixel scores, boundary F-score, field instance matching (the papers'
majority rule and one-to-one IoU), and the object-level precision, recall and F1 of Fields of The
World (a match is a one-to-one pair with IoU > 0.5).

Undefined values are NaN in Python results and ``null`` in the JSON that
:func:`evaluate_masks` returns; each function's docstring says when they occur.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from magseg_ray.errors import ConfigError
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import Schema, get_schema

_NAN = float("nan")


def _div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """Elementwise ``num / den`` as float, ``empty`` where ``den == 0``."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(num.shape, empty), where=den > 0)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN if there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else _NAN


def _edges(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class (the image border is no neighbour)."""
    rows, cols = mask[1:] != mask[:-1], mask[:, 1:] != mask[:, :-1]
    edge = np.zeros(mask.shape, bool)
    edge[1:] |= rows
    edge[:-1] |= rows
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    return edge


def _boundary_hits(pred: np.ndarray, truth: np.ndarray, n: int, tolerance: float) -> np.ndarray:
    """Per class: [#pred boundary px, #those near truth, #truth boundary px, #those near pred]."""
    pred_edge, truth_edge = _edges(pred), _edges(truth)
    hits = np.zeros((n, 4))
    for c in range(n):
        p, t = pred_edge & (pred == c), truth_edge & (truth == c)
        if p.any() and t.any():
            hits[c, 1] = (ndimage.distance_transform_edt(~t)[p] <= tolerance).sum()
            hits[c, 3] = (ndimage.distance_transform_edt(~p)[t] <= tolerance).sum()
        hits[c, 0], hits[c, 2] = p.sum(), t.sum()
    return hits


def pixel_metrics(
    pred: np.ndarray, truth: np.ndarray, schema: str | Schema, boundary_tolerance: float = 2
) -> dict:
    """Per-class pixel metrics of a predicted class mask against the truth, keyed by class name.

    For each class: ``iou``, ``dice``, ``accuracy`` (share of pixels where pred and truth agree
    on membership of the class), ``precision``, ``recall``, ``specificity``, and the boundary
    scores ``boundary_precision``, ``boundary_recall``, ``boundary_f``. A class's boundary pixels
    are its pixels with a 4-neighbour of another class; boundary precision is the share of
    predicted boundary pixels within ``boundary_tolerance`` pixels (Euclidean) of a truth boundary
    pixel of the same class, boundary recall the converse, ``boundary_f`` their harmonic mean.
    Key ``"mean"`` holds each metric averaged over the classes present in pred or truth.

    Undefined cases:

    - A class absent from both pred and truth has ``iou``, ``dice``, ``precision``, ``recall``
      and all boundary scores NaN, and is left out of ``"mean"`` entirely.
    - A class present in only one of them scores 0 for whichever of precision/recall (pixel or
      boundary) has an empty denominator: every pixel of that class is an error.
    - Boundary scores are NaN when neither mask has boundary pixels of the class.
    - ``specificity`` is NaN when every truth pixel is of the class; means skip NaN values.
    """
    schema = get_schema(schema)
    pred, truth = schema.check_mask(pred, "prediction"), schema.check_mask(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    n = len(schema.classes)
    cm = np.bincount(truth.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n)
    cm = cm.reshape(n, n)  # rows truth, columns pred
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    tn = truth.size - tp - fp - fn
    present = tp + fp + fn > 0
    bp, bp_hit, bt, bt_hit = _boundary_hits(pred, truth, n, boundary_tolerance).T
    b_prec, b_rec = _div(bp_hit, bp, 0.0), _div(bt_hit, bt, 0.0)
    b_f = _div(2 * b_prec * b_rec, b_prec + b_rec, 0.0)
    scores = {
        "iou": _div(tp, tp + fp + fn, _NAN),
        "dice": _div(2 * tp, 2 * tp + fp + fn, _NAN),
        "accuracy": _div(tp + tn, truth.size, _NAN),
        "precision": _div(tp, tp + fp, 0.0),
        "recall": _div(tp, tp + fn, 0.0),
        "specificity": _div(tn, tn + fp, _NAN),
        "boundary_precision": b_prec,
        "boundary_recall": b_rec,
        "boundary_f": b_f,
    }
    for key in ("precision", "recall"):
        scores[key][~present] = _NAN
    for key in ("boundary_precision", "boundary_recall", "boundary_f"):
        scores[key][bp + bt == 0] = _NAN
    out = {name: {k: float(v[c]) for k, v in scores.items()} for c, name in enumerate(schema.names)}
    out["mean"] = {k: _nanmean(v[present]) for k, v in scores.items()}
    return out


def _compact(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel non-negative ids to 0..n, keeping 0 as "none"; return the flat labels and n."""
    ids = np.asarray(ids).ravel()
    if ids.size and ids.min() < 0:
        raise ValueError("instance ids must be non-negative")
    uniq, labels = np.unique(ids, return_inverse=True)
    if uniq.size and uniq[0] == 0:
        return labels, uniq.size - 1
    return labels + 1, uniq.size


class _Overlaps(NamedTuple):
    """Pixel counts shared by every truth and predicted instance of two instance rasters."""

    table: np.ndarray
    """``(n_truth + 1) x n_pred``: pixels of predicted instance j in truth instance i (row 0: no truth)."""
    truth_area: np.ndarray
    """Pixels of each truth instance, index 0 = no truth."""
    pred_area: np.ndarray
    """Pixels of each predicted instance."""

    def pair_iou(self) -> np.ndarray:
        """``n_truth x n_pred`` IoU of every (truth, prediction) pair."""
        inter = self.table[1:]
        return inter / (self.truth_area[1:, None] + self.pred_area[None, :] - inter)


def _overlaps(pred_instances: np.ndarray, truth_instances: np.ndarray) -> _Overlaps:
    """The overlap table of two instance rasters of one shape (non-negative ids, 0 = none)."""
    shapes = np.shape(pred_instances), np.shape(truth_instances)
    if shapes[0] != shapes[1]:
        raise ValueError(f"prediction shape {shapes[0]} differs from truth shape {shapes[1]}")
    truth, n_truth = _compact(truth_instances)
    pred, n_pred = _compact(pred_instances)
    table = np.bincount(truth * (n_pred + 1) + pred, minlength=(n_truth + 1) * (n_pred + 1))
    table = table.reshape(n_truth + 1, n_pred + 1)[:, 1:]  # rows truth (0 = none), columns pred
    return _Overlaps(table, np.bincount(truth, minlength=n_truth + 1), table.sum(0))


def instance_metrics(pred_instances: np.ndarray, truth_instances: np.ndarray) -> dict:
    """Match predicted instances to truth instances and score each truth instance by IoU.

    Rasters hold non-negative instance ids, 0 = no instance. Matching rule: each predicted
    instance P goes to the truth instance T it overlaps most, provided that overlap is at least
    half of P's area (majority overlap; ties go to the lower truth id); otherwise P is a false
    positive. A truth instance's prediction is the union of the predictions assigned to it, so
    an over-segmented field is scored as merged; its IoU is ``|T ∩ union| / |T ∪ union|``, 0 if
    nothing was assigned (a false negative).

    This rule forgives over-segmentation completely: a map shattered along every image edge scores
    like a clean one. ``one_to_one_mean_iou`` does not: each truth instance is scored by its best
    single predicted instance, so a field split in two scores at most about one half. Neither
    counts the pieces; :func:`object_metrics` does.

    Returns ``mean_iou``, ``median_iou`` and ``one_to_one_mean_iou`` over truth instances,
    ``false_negative_rate`` (share of truth instances with nothing assigned), ``false_positive_rate``
    (share of predicted instances assigned to no truth), ``n_truth`` and ``n_pred``. Undefined cases: with no truth
    instances the IoUs and the false negative rate are NaN and the false positive rate is 1.0
    (NaN if there are no predictions either); with no predictions the false positive rate is NaN.
    """
    o = _overlaps(pred_instances, truth_instances)
    table, pred_area = o.table, o.pred_area
    n_truth, n_pred = table.shape[0] - 1, table.shape[1]
    assigned = np.zeros(n_pred, np.int64)
    if n_truth:
        best = table[1:].argmax(0) + 1
        overlap = table[best, np.arange(n_pred)]
        assigned = np.where(2 * overlap >= pred_area, best, 0)
    inter = np.bincount(assigned, weights=table[assigned, np.arange(n_pred)], minlength=n_truth + 1)
    union_pred = np.bincount(assigned, weights=pred_area, minlength=n_truth + 1)
    n_assigned = np.bincount(assigned, minlength=n_truth + 1)[1:]
    iou = inter[1:] / (o.truth_area[1:] + union_pred[1:] - inter[1:])
    best = o.pair_iou().max(1) if n_pred else np.zeros(n_truth)
    return {
        "mean_iou": float(iou.mean()) if n_truth else _NAN,
        "one_to_one_mean_iou": float(best.mean()) if n_truth else _NAN,
        "median_iou": float(np.median(iou)) if n_truth else _NAN,
        "false_negative_rate": float((n_assigned == 0).mean()) if n_truth else _NAN,
        "false_positive_rate": float((assigned == 0).mean()) if n_pred else _NAN,
        "n_truth": n_truth,
        "n_pred": n_pred,
    }


def match_objects(pair_iou: np.ndarray, iou_threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one matches ``(truth index, pred index)`` of pairs whose IoU exceeds ``iou_threshold``.

    Pairs are taken in order of decreasing IoU (ties: lower truth, then lower prediction index),
    each truth and each prediction at most once. With a threshold of 0.5 or more a truth and a
    prediction over it are each other's only candidates, so the order cannot change the result;
    the rule is written out so that it does not depend on that. Thresholds below 0.5 are refused,
    as Fields of The World refuses them.
    """
    if not 0.5 <= iou_threshold < 1:
        raise ConfigError(f"object IoU threshold must be in [0.5, 1), got {iou_threshold}")
    truth_idx, pred_idx = np.nonzero(pair_iou > iou_threshold)
    order = np.lexsort((pred_idx, truth_idx, -pair_iou[truth_idx, pred_idx]))
    used_truth, used_pred, matches = set(), set(), []
    for t, p in zip(truth_idx[order].tolist(), pred_idx[order].tolist()):
        if t not in used_truth and p not in used_pred:
            used_truth.add(t)
            used_pred.add(p)
            matches.append((t, p))
    return matches


def object_metrics(pred_instances: np.ndarray, truth_instances: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Object-level scores of Fields of The World: each object counts once, whatever its size.

    A predicted instance matches a truth instance when their IoU exceeds ``iou_threshold`` (0.5),
    one to one (:func:`match_objects`). Matched pairs are true positives (``tp``), unmatched
    predictions false positives (``fp``), unmatched truths false negatives (``fn``);
    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1 = 2 tp / (2 tp + fp + fn)``.
    A field split in two, two fields merged into one, and a map shattered into many pieces all
    score a miss, and every piece of a shattered map is a false positive.

    Undefined cases: precision is NaN with no predictions, recall with no truth, F1 with neither.
    """
    o = _overlaps(pred_instances, truth_instances)
    n_truth, n_pred = o.table.shape[0] - 1, o.table.shape[1]
    tp = len(match_objects(o.pair_iou(), iou_threshold))
    fp, fn = n_pred - tp, n_truth - tp
    return {
        "precision": tp / n_pred if n_pred else _NAN,
        "recall": tp / n_truth if n_truth else _NAN,
        "f1": 2 * tp / (n_pred + n_truth) if n_pred + n_truth else _NAN,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "iou_threshold": iou_threshold,
    }


def _json_safe(value):
    """``value`` with NaN floats replaced by None, recursively through dicts."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate_masks(
    pred_classes: np.ndarray,
    truth_classes: np.ndarray,
    schema: str | Schema,
    pred_instances: np.ndarray | None = None,
    truth_instances: np.ndarray | None = None,
    boundary_tolerance: float = 2,
    object_iou: float = 0.5,
) -> dict:
    """All metrics of a prediction against the truth, as a JSON-serialisable dict (NaN -> None).

    ``{"schema": name, "pixel": pixel_metrics(...), "instance": {class name: instance_metrics},
    "object": {class name: object_metrics}}``. Instance and object metrics are computed for
    ``"field"`` from the given instance rasters, or from
    :func:`~magseg_ray.masks.instances.instances_from_classes` where one is not given, and for
    every other non-background class outside ``schema.field_classes`` (tree, cloud, pond and
    well in ``alu``) from the 4-connected components of that class. ``object_iou`` is the IoU a
    match must exceed (:func:`object_metrics`).
    """
    schema = get_schema(schema)
    if pred_instances is None:
        pred_instances = instances_from_classes(pred_classes, schema)
    if truth_instances is None:
        truth_instances = instances_from_classes(truth_classes, schema)
    pairs = {"field": (pred_instances, truth_instances)}
    for c in sorted(set(range(1, len(schema.classes))) - set(schema.field_classes)):
        pairs[schema.names[c]] = (ndimage.label(np.asarray(pred_classes) == c)[0],
                                  ndimage.label(np.asarray(truth_classes) == c)[0])
    return _json_safe(
        {
            "schema": schema.name,
            "pixel": pixel_metrics(pred_classes, truth_classes, schema, boundary_tolerance),
            "instance": {name: instance_metrics(*pair) for name, pair in pairs.items()},
            "object": {name: object_metrics(*pair, object_iou) for name, pair in pairs.items()},
        }
    )
