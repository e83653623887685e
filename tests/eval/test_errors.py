"""Each cause of a lost object F1 on a hand-made map where it is known."""

import numpy as np
import pytest
from PIL import Image

from magseg_ray.eval.errors import COLOURS, add_breakdowns, classify_errors, error_breakdown, error_picture, size_labels
from magseg_ray.eval.metrics import object_metrics


def _scene():
    """Truth fields 1-6 and pieces 1-7, one of each kind (see the asserts)."""
    truth = np.zeros((40, 100), np.int32)
    pred = np.zeros_like(truth)
    truth[0:20, 0:20], pred[0:20, 0:20] = 1, 1  # matched
    truth[0:20, 20:40] = 2
    pred[0:20, 20:30], pred[0:20, 30:40] = 2, 3  # field 2 split in two
    truth[20:40, 0:20], truth[20:40, 20:40] = 3, 4
    pred[20:40, 0:40] = 4  # fields 3 and 4 merged
    pred[0:20, 45:60] = 5  # a piece where no field is
    pred[25:28, 45:48] = 6  # a small piece
    truth[30:40, 45:60] = 5  # a field nothing covers
    truth[0:10, 65:75] = 6
    pred[0:20, 62:82] = 7  # holds field 6, four times its size
    return pred, truth


def test_each_cause_on_a_known_map():
    pred, truth = _scene()
    pieces, fields = classify_errors(pred, truth, small_px=50)
    assert pieces == {1: "match", 2: "split", 3: "split", 4: "merged", 5: "outside", 6: "small", 7: "shape"}
    assert fields == {1: "match", 2: "split", 3: "merged", 4: "merged", 5: "missed", 6: "shape"}


def test_breakdown_counts_agree_with_object_f1_and_bin_by_size():
    pred, truth = _scene()
    b = error_breakdown(pred, truth, pixel_m2=0.25, small_m2=12.5)  # 0.5 m pixels: small = 50 px
    o = object_metrics(pred, truth)
    assert (b["tp"], b["fp"], b["fn"]) == (o["tp"], o["fp"], o["fn"]) == (1, 6, 5)
    assert b["pieces"] == 7 and b["truth_fields"] == 6 and b["pieces_per_truth_field"] == pytest.approx(7 / 6)
    fp, fn = b["false_positives"], b["false_negatives"]
    assert {c: v["total"] for c, v in fp.items()} == {"small": 1, "merged": 1, "shape": 1, "outside": 1, "split": 2}
    assert {c: v["total"] for c, v in fn.items()} == {"missed": 1, "merged": 2, "split": 1, "shape": 1}
    assert fp["merged"]["100-500"] == 1  # 800 px x 0.25 m² = 200 m²
    assert fp["small"]["<100"] == 1 and fn["shape"]["<100"] == 1  # 2.25 m², 25 m²
    both = add_breakdowns(b, b)
    assert both["fp"] == 12 and both["false_positives"]["split"]["total"] == 4
    assert both["pieces_per_truth_field"] == pytest.approx(7 / 6)


def test_small_comes_first_and_an_empty_map_misses_every_field():
    pred, truth = _scene()
    pieces, _ = classify_errors(pred, truth, small_px=250)  # the split halves (200 px) are now too small
    assert pieces[2] == pieces[3] == "small"
    pieces, fields = classify_errors(np.zeros_like(truth), truth, small_px=50)
    assert pieces == {} and set(fields.values()) == {"missed"}
    pieces, fields = classify_errors(pred, np.zeros_like(truth), small_px=50)
    assert fields == {} and set(pieces.values()) == {"outside", "small"}


def test_size_labels():
    assert size_labels() == ["<100", "100-500", "500-2000", "2000-10000", ">=10000"]


def test_picture_colours_each_kind(tmp_path):
    pred, truth = _scene()
    path = tmp_path / "errors.png"
    error_picture(path, None, pred, truth, pixel_m2=1.0, small_m2=50)
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # every piece kind's fill is in the picture: its colour blended 0.6 over the darkened grey
    for kind in ("match", "small", "merged", "outside", "split", "shape"):
        fill = 0.4 * 90 * 0.45 + 0.6 * np.array(COLOURS[kind])
        assert (np.abs(picture - fill).max(-1) <= 3).any(), kind
