import json
import math

import numpy as np
import pytest

from magseg_ray.errors import ConfigError, SchemaError
from magseg_ray.eval.metrics import (
    evaluate_masks,
    instance_metrics,
    match_objects,
    object_metrics,
    pixel_metrics,
)


def test_pixel_metrics_by_hand():
    truth = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.uint8)
    m = pixel_metrics(pred, truth, "ai4sf")
    # field: tp 3, fp 2, fn 1, tn 2; background: tp 2, fp 1, fn 2, tn 3
    keys = ("iou", "dice", "accuracy", "precision", "recall", "specificity")
    field = dict(zip(keys, (3 / 6, 6 / 9, 5 / 8, 3 / 5, 3 / 4, 2 / 4)))
    background = dict(zip(keys, (2 / 5, 4 / 7, 5 / 8, 2 / 3, 2 / 4, 3 / 4)))
    for key in field:
        assert m["field"][key] == pytest.approx(field[key])
        assert m["background"][key] == pytest.approx(background[key])
        assert m["mean"][key] == pytest.approx((field[key] + background[key]) / 2)


def test_absent_class_is_nan_and_left_out_of_mean():
    truth = np.array([[0, 1], [1, 1]], np.uint8)
    pred = np.array([[0, 0], [1, 1]], np.uint8)
    m = pixel_metrics(pred, truth, "fields3")
    for key in ("iou", "dice", "precision", "recall", "boundary_f"):
        assert math.isnan(m["boundary"][key])
    assert m["boundary"]["accuracy"] == 1.0
    assert m["field"]["iou"] == pytest.approx(2 / 3)
    assert m["background"]["iou"] == pytest.approx(1 / 2)
    assert m["mean"]["iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_in_truth_only_scores_zero():
    truth = np.array([[0, 1]], np.uint8)
    pred = np.array([[0, 0]], np.uint8)
    field = pixel_metrics(pred, truth, "ai4sf")["field"]
    assert (field["iou"], field["precision"], field["recall"], field["boundary_f"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "tolerance, field, background",
    [(2, (1.0, 0.5, 2 / 3), (1.0, 1.0, 1.0)), (1, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))],
)
def test_boundary_f_with_tolerance(tolerance, field, background):
    # field boundary pixels: truth at columns 2 and 8, pred at 4; background: truth 3 and 7, pred 5
    truth = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1]], np.uint8)
    pred = np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], np.uint8)
    m = pixel_metrics(pred, truth, "ai4sf", boundary_tolerance=tolerance)
    for name, expected in (("field", field), ("background", background)):
        got = tuple(m[name][k] for k in ("boundary_precision", "boundary_recall", "boundary_f"))
        assert got == pytest.approx(expected)


def test_pixel_metrics_rejects_values_outside_schema():
    with pytest.raises(SchemaError):
        pixel_metrics(np.array([[2]], np.uint8), np.array([[0]], np.uint8), "ai4sf")


def test_over_segmented_field_is_merged():
    truth = np.zeros((4, 6), np.int32)
    truth[:2, :4] = 7
    pred = np.zeros_like(truth)
    pred[:2, :2], pred[:2, 2:4] = 1, 2
    m = instance_metrics(pred, truth)
    assert (m["mean_iou"], m["false_negative_rate"], m["false_positive_rate"]) == (1.0, 0.0, 0.0)
    assert (m["n_truth"], m["n_pred"]) == (1, 2)
    assert m["one_to_one_mean_iou"] == 0.5  # best single piece: half the field


def test_one_to_one_iou_sees_merges_and_missing_predictions():
    truth = np.zeros((2, 4), np.int32)
    truth[:, :2], truth[:, 2:] = 1, 2
    merged = instance_metrics(np.ones_like(truth), truth)
    assert merged["one_to_one_mean_iou"] == 0.5 and merged["mean_iou"] == 0.25  # the tie goes to field 1 only
    assert instance_metrics(np.zeros_like(truth), truth)["one_to_one_mean_iou"] == 0.0


def test_partial_match_by_hand():
    truth = np.zeros((3, 4), np.int32)
    truth[:2, :3] = 1_000_000  # area 6; ids need not be small
    pred = np.zeros_like(truth)
    pred[:2, 1:3] = 5  # 4 px inside the truth ...
    pred[2, 2] = 5  # ... and 1 outside: a majority of its 5 px
    m = instance_metrics(pred, truth)
    assert m["mean_iou"] == m["one_to_one_mean_iou"] == pytest.approx(4 / 7)
    assert (m["false_negative_rate"], m["false_positive_rate"]) == (0.0, 0.0)


def test_straddling_prediction_without_majority_is_fp_and_fn():
    truth = np.zeros((3, 4), np.int32)
    truth[:2, :2], truth[:2, 2:] = 1, 2
    pred = np.zeros_like(truth)
    pred[1:, 1:3] = 1  # 1 px in each truth and 2 px of background: no majority
    m = instance_metrics(pred, truth)
    assert m["mean_iou"] == m["median_iou"] == 0.0
    assert m["one_to_one_mean_iou"] == pytest.approx(1 / 7)  # 1 px shared, 4 + 4 - 1 in the union
    assert (m["false_negative_rate"], m["false_positive_rate"]) == (1.0, 1.0)


def test_empty_truth():
    empty = np.zeros((3, 3), np.int32)
    pred = empty.copy()
    pred[0, 0] = 1
    m = instance_metrics(pred, empty)
    assert math.isnan(m["mean_iou"]) and math.isnan(m["median_iou"]) and math.isnan(m["false_negative_rate"])
    assert math.isnan(m["one_to_one_mean_iou"])
    assert (m["false_positive_rate"], m["n_truth"], m["n_pred"]) == (1.0, 0, 1)
    assert math.isnan(instance_metrics(empty, empty)["false_positive_rate"])


def test_evaluate_masks_is_json_safe_with_nulls():
    empty = np.zeros((4, 4), np.uint8)
    m = evaluate_masks(empty, empty, "fields3")
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert m["pixel"]["field"]["iou"] is None
    assert m["instance"]["field"]["mean_iou"] is None
    assert m["pixel"]["mean"]["iou"] == 1.0  # background only


def test_evaluate_masks_alu_scores_each_class_as_instances():
    truth = np.array([[1, 1, 0, 2], [0, 0, 0, 2], [4, 0, 0, 0]], np.uint8)
    pred = np.array([[1, 1, 0, 2], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
    m = evaluate_masks(pred, truth, "alu")["instance"]
    assert set(m) == {"field", "tree", "cloud", "pond", "well"}
    assert m["field"]["mean_iou"] == 1.0
    assert m["tree"]["mean_iou"] == pytest.approx(1 / 2)
    assert m["pond"]["false_negative_rate"] == 1.0
    assert m["cloud"]["n_truth"] == 0 and m["cloud"]["mean_iou"] is None


def _two_fields() -> np.ndarray:
    """Two 4 x 4 fields side by side, ids 3 and 9, with a background column between them."""
    truth = np.zeros((4, 9), np.int32)
    truth[:, :4], truth[:, 5:] = 3, 9
    return truth


def _objects(pred, truth) -> tuple:
    m = object_metrics(pred, truth)
    return m["tp"], m["fp"], m["fn"], m["precision"], m["recall"], m["f1"]


def test_object_metrics_perfect_and_partial_match():
    truth = _two_fields()
    assert _objects(truth * 2, truth) == (2, 0, 0, 1.0, 1.0, 1.0)  # ids need not agree
    pred = truth.copy()
    pred[:, 5:7] = 0  # field 9 predicted as 8 of its 16 px: IoU 0.5 exactly, not > 0.5
    assert _objects(pred, truth) == (1, 1, 1, 0.5, 0.5, 0.5)
    pred[0, 5] = 9  # 9 of 16 px: IoU 9/16 > 0.5
    assert _objects(pred, truth) == (2, 0, 0, 1.0, 1.0, 1.0)


def test_object_metrics_split_field_is_a_miss_and_two_false_positives():
    truth = _two_fields()
    pred = truth.copy()
    pred[:, 7:] = 4  # field 9 split in halves (IoU 0.5 each, not > 0.5)
    assert _objects(pred, truth) == (1, 2, 1, 1 / 3, 1 / 2, 2 / 5)
    # the majority rule forgives the split completely
    assert instance_metrics(pred, truth)["mean_iou"] == 1.0


def test_object_metrics_merged_fields_match_at_most_one():
    truth = _two_fields()
    assert _objects((truth > 0).astype(np.int32), truth) == (0, 1, 2, 0.0, 0.0, 0.0)  # IoU 16/32 each
    truth[:, 5:] = 0
    truth[:2, 5:] = 9  # a small neighbour: the merged prediction (24 px) holds all of field 3 (16 px)
    merged = (truth > 0).astype(np.int32)
    assert _objects(merged, truth) == (1, 0, 1, 1.0, 0.5, 2 / 3)  # IoU 16/24 with field 3 only


def test_object_metrics_shattered_map():
    truth = _two_fields()
    pred = np.arange(truth.size, dtype=np.int32).reshape(truth.shape) + 1  # every pixel its own piece
    pred[truth == 0] = 0
    assert _objects(pred, truth) == (0, 32, 2, 0.0, 0.0, 0.0)
    assert instance_metrics(pred, truth)["mean_iou"] == 1.0  # majority matching scores it perfect


def test_object_metrics_undefined_cases():
    empty, truth = np.zeros((4, 9), np.int32), _two_fields()
    tp, fp, fn, precision, recall, f1 = _objects(empty, truth)
    assert (tp, fp, fn, recall, f1) == (0, 0, 2, 0.0, 0.0) and math.isnan(precision)
    tp, fp, fn, precision, recall, f1 = _objects(truth, empty)
    assert (tp, fp, fn, precision, f1) == (0, 2, 0, 0.0, 0.0) and math.isnan(recall)
    assert all(math.isnan(v) for v in _objects(empty, empty)[3:])


def test_match_objects_uses_each_truth_and_prediction_once():
    iou = np.array([[0.9, 0.8], [0.85, 0.2]])
    assert match_objects(iou) == [(0, 0)]  # truth 1 and pred 1 lost their only candidates above 0.5 ...
    assert match_objects(np.array([[0.6, 0.7], [0.55, 0.3]])) == [(0, 1), (1, 0)]  # ... each used once
    with pytest.raises(ConfigError, match="0.5"):
        match_objects(iou, 0.3)


def test_evaluate_masks_has_object_scores():
    truth = np.array([[1, 1, 0, 1, 1]], np.uint8)
    m = evaluate_masks(truth, truth, "fields3")
    assert m["object"]["field"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 2, "fp": 0, "fn": 0,
                                    "iou_threshold": 0.5}
    assert evaluate_masks(truth, truth, "alu")["object"]["tree"]["f1"] is None
