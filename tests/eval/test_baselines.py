import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from magseg_ray.eval.baselines import baseline_classes

ROOT = Path(__file__).resolve().parents[2]
SCENE = ROOT / "tests/data/naip/naip_44p0347_m93p8702"


def job(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_threshold_separates_smooth_fields_from_rough_ground():
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 120, np.uint8)
    image[:, 32:] = rng.integers(0, 256, (64, 32, 3))  # rough texture
    image[:, :32] += rng.integers(0, 6, (64, 32, 1)).astype(np.uint8)  # fine texture
    classes = baseline_classes(image, "threshold")
    assert (classes[:, 4:26] > 0).mean() > 0.9 and (classes[:, 38:] == 0).mean() > 0.9
    assert (baseline_classes(image, "everything") == 1).all()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_classes(image, "magic")


def test_baseline_job_output_is_scored_by_evaluate(tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert job("baseline")([f"{SCENE}.tif", str(out), "--method", "threshold"]) == 0
    with rasterio.open(out) as src, rasterio.open(f"{SCENE}.tif") as scene:
        assert src.tags()["MAGSEG_KIND"] == "class" and src.transform == scene.transform
    capsys.readouterr()
    assert job("evaluate")(["--pred", str(out), "--truth", f"{SCENE}.labels.tif"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["instance"]["field"]["mean_iou"] < 1
    assert job("baseline")([str(tmp_path / "missing.tif"), str(out)]) == 2
