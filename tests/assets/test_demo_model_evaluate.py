"""The held-out evaluation script of the model card: the area it maps and how it sums scenes up
(its mapping and scoring run on the real rules of jobs/map_region.py and jobs/evaluate.py)."""

import importlib.util
from pathlib import Path

import geopandas as gpd
import pytest

from magseg_ray.scenes.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/naip"


def _script():
    spec = importlib.util.spec_from_file_location("demo_evaluate", ROOT / "magseg_ray/assets/demo_model/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_scenes_by_default_squares_on_request():
    ev, scenes = _script(), load_catalog(DATA).scenes
    whole = ev._aoi(scenes, 0)
    assert whole.contains(scenes.geometry.reset_index(drop=True)).all()  # every pixel of every scene
    squares = ev._aoi(scenes, 100)
    for square, row in zip(squares, scenes.itertuples()):
        x0, y0, x1, y1 = gpd.GeoSeries([square], crs=4326).to_crs(row.crs).total_bounds
        assert (x1 - x0, y1 - y0) == (pytest.approx(200, abs=0.01), pytest.approx(200, abs=0.01))


def test_scenes_pool_into_object_scores_and_a_table():
    ev = _script()
    rows = [{"model": {"field_instance_mean_iou": iou, "field_one_to_one_mean_iou": iou / 2, "field_pixel_iou": 0.8,
                       "mean_dice": 0.7, "object_tp": tp, "object_fp": fp, "object_fn": fn, "n_pred": tp + fp}}
            for iou, tp, fp, fn in ((0.2, 1, 3, 9), (0.6, 4, 0, 1))]
    m = ev._pooled(rows, "model")
    assert m["field_instance_mean_iou"] == pytest.approx(0.4) and m["field_one_to_one_mean_iou"] == pytest.approx(0.2)
    assert (m["object_tp"], m["object_fp"], m["object_fn"], m["n_pred"]) == (5, 3, 10, 8)
    assert (m["object_precision"], m["object_recall"], m["object_f1"]) == (5 / 8, 5 / 15, 10 / 23)
    table = ev._table({"model": m}, 15).splitlines()
    assert table[2] == "| model | 0.400 | 0.200 | 0.625 | 0.333 | 0.435 | 8 | 0.800 |"


def test_the_train_split_picks_training_scenes_only():
    from magseg_ray.chips.pipeline import split_of

    ev, scenes = _script(), load_catalog(DATA).scenes
    val, train = ev._scenes_of(scenes, "val"), ev._scenes_of(scenes, "train")
    assert all(split_of(s, 0.2) == "val" for s in val["id"]) and all(split_of(s, 0.2) == "train" for s in train["id"])
    assert 1 <= len(train) <= ev.TRAIN_SCENES and set(train["id"]).isdisjoint(val["id"])
    every = sorted(s for s in scenes["id"] if split_of(s, 0.2) == "train")[:: ev.TRAIN_EVERY][: ev.TRAIN_SCENES]
    assert list(train["id"]) == every
