"""The fields sweep of the model card: a run's class raster rescored at other field rules, without decoding."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import rasterio

from magseg_ray.fields.rules import FieldRules
from magseg_ray.masks.schemas import classes_from_instances

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/naip"
SCENE = "naip_43p4066_m83p6220"


def _script():
    spec = importlib.util.spec_from_file_location("fields_sweep", ROOT / "magseg_ray/assets/demo_model/fields_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path) -> Path:
    """A run folder whose class raster is the truth with a corner of its largest field cut off."""
    with rasterio.open(DATA / f"{SCENE}.labels.tif") as src:
        labels, profile = src.read(1), src.profile
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    rows, cols = np.nonzero(labels == ids[counts.argmax()])
    r, c = rows.min() + 12, cols.min() + 12
    labels = labels.astype(np.int32)
    labels[rows.min():r, cols.min():c] = np.where(labels[rows.min():r, cols.min():c] == ids[counts.argmax()],
                                                  labels.max() + 1, labels[rows.min():r, cols.min():c])
    classes = classes_from_instances(labels, "fields3").astype(np.uint8)
    run = tmp_path / "map"
    (run / "masks").mkdir(parents=True)
    profile.update(dtype="uint8", nodata=255)
    with rasterio.open(run / "masks" / f"{SCENE}.tif", "w", **profile) as dst:
        dst.write(classes, 1)
    (run / "run.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps({"seed_px": 0.0}))
    return run


def test_a_cut_off_corner_merges_back_at_a_minimum_size_raster_and_polygons_alike(tmp_path):
    sweep = _script()
    scenes = sweep._scenes(_run(tmp_path), DATA, 0.0)
    assert len(scenes) == 1 and scenes[0]["metres"] == 1.0
    before, after = sweep.score(scenes, FieldRules()), sweep.score(scenes, FieldRules(min_m2=500))
    assert before["fp_by_cause"]["small"] >= 1  # the corner, 11 x 11 m at most
    assert after["fp_by_cause"]["small"] == 0 and after["pieces"] < before["pieces"]
    assert after["object_f1"] > before["object_f1"] and after["one_to_one_iou"] >= before["one_to_one_iou"]
    polygons = sweep.score(scenes, FieldRules(min_m2=500), polygons=tmp_path / "poly")
    assert polygons["tp"] == after["tp"] and polygons["pieces"] == after["pieces"]
    assert abs(polygons["one_to_one_iou"] - after["one_to_one_iou"]) < 0.02
