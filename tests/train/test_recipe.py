"""jobs/train_demo.py: pack labelled scenes, then the one-process recipe (vision pretraining, frozen SFT)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magseg_ray.errors import ConfigError
from magseg_ray.model.card import read_model_prompt
from magseg_ray.model.checkpoint import load_model
from magseg_ray.train.demo_data import unpack_scenes

ROOT = Path(__file__).resolve().parents[2]


def _job():
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "jobs" / "train_demo.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job.main


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    assert _job()(["pack", "--data", str(ROOT / "tests/data/naip"), "--out", str(out), "--val-fraction", "0.5"]) == 0
    return out


def test_packed_scenes_read_back_with_their_classes(packed):
    import rasterio

    index = json.loads((packed / "index.json").read_text())
    assert index["scenes"] and "USDA" in index["attribution"]
    scenes = unpack_scenes(packed, boundary_width=6)
    assert len(scenes["train"]) + len(scenes["val"]) == len(index["scenes"])
    first = index["scenes"][0]
    image, classes = scenes[first["split"]][0]  # scenes come back in index order within each split
    with rasterio.open(ROOT / "tests/data/naip" / f"{first['id']}.labels.tif") as src:
        fields = src.read(1) > 0
    assert image.dtype == "uint8" and image.shape[:2] == classes.shape == fields.shape
    assert set(np.unique(classes)) <= {0, 1, 2} and ((classes > 0) == fields).all()  # lossless labels


def test_recipe_trains_the_decoder_on_a_frozen_tower_and_resumes(packed, tmp_path):
    main = _job()
    flags = ["train", "--data", str(packed), "--out", str(tmp_path / "run"), "--base", "tiny", "--vision-steps", "2",
             "--vision-batch-size", "2", "--batch-size", "4", "--eval-every", "2", "--val-patches", "4",
             "--log-every", "1"]
    assert main([*flags, "--sft-steps", "2"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["vision"]["final"]["step"] == 2
    assert metrics["history"][-1]["step"] == 2 and 0 <= metrics["history"][-1]["val_dice"] <= 1
    card = read_model_prompt(tmp_path / "run" / "model")
    assert (card.instruction, card.crop_scale, card.boundary_width, card.field_seed_px) == ("short", 1.0, 6, 16.0)
    first, _ = load_model(tmp_path / "run" / "model")
    # more steps: the run continues from its saved model, the tower stays as pretrained
    assert main([*flags, "--sft-steps", "4"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    second, _ = load_model(tmp_path / "run" / "model")
    old = dict(first.named_parameters())
    changed = {n for n, p in second.named_parameters() if not torch.equal(p, old[n])}
    assert any("language_model" in n for n in changed)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in changed)


def test_recipe_refuses_a_folder_that_is_not_packed(tmp_path):
    from magseg_ray.train.recipe import RecipeConfig, run_recipe

    with pytest.raises(ConfigError, match="not a packed scene folder"):
        run_recipe(RecipeConfig(data=str(tmp_path), out=str(tmp_path / "run"), base="tiny"))


def test_a_time_budget_shortens_the_schedule_and_ends_complete(packed, tmp_path):
    flags = ["train", "--data", str(packed), "--out", str(tmp_path / "run"), "--base", "tiny", "--vision-steps", "0",
             "--batch-size", "2", "--eval-every", "100", "--val-patches", "2", "--warmup-steps", "2",
             "--sft-steps", "1000", "--minutes", "0.001"]
    assert _job()(flags) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # 0.06 s cannot hold 1000 steps: the plan stops after the timed warmup and still validates and saves
    assert metrics["planned_steps"] == 2 and metrics["status"] == "complete"
    assert [h["step"] for h in metrics["history"]] == [2]


def test_train_needs_neither_ray_nor_gdal(packed, tmp_path):
    """A lent GPU machine has PyTorch and transformers only: `train` must not import the rest."""
    import subprocess
    import sys

    blocked = ["ray", "deepspeed", "rasterio", "geopandas", "pyarrow", "s3fs", "shapely", "pyogrio"]
    code = ("import sys, runpy; sys.modules.update({m: None for m in %r}); sys.argv = ['train_demo.py'] + %r; "
            "runpy.run_path(%r, run_name='__main__')") % (
        blocked, ["train", "--data", str(packed), "--out", str(tmp_path / "run"), "--base", "tiny",
                  "--vision-steps", "1", "--vision-batch-size", "2", "--batch-size", "2", "--sft-steps", "1",
                  "--val-patches", "2"], str(ROOT / "jobs" / "train_demo.py"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "complete"


def test_calibrate_writes_the_largest_bias_that_draws_no_more_boundary_than_the_truth(packed, tmp_path):
    from magseg_ray.train.calibrate import calibrate_boundary

    main = _job()
    out = tmp_path / "run"
    assert main(["train", "--data", str(packed), "--out", str(out), "--base", "tiny", "--vision-steps", "0",
                 "--batch-size", "2", "--sft-steps", "1", "--val-patches", "2"]) == 0
    found = calibrate_boundary(out / "model", packed, patches=6, biases=[1.0, 1e6])
    assert 0 < found["truth_share"] < 1 and len(found["shares"]) == 2
    assert found["shares"][1] >= found["shares"][0]  # a huge bias never draws less boundary
    within = [b for s, b in zip(found["shares"], [1.0, 1e6]) if s <= found["truth_share"]]
    assert found["boundary_bias"] == max(within, default=1.0) == read_model_prompt(out / "model").boundary_bias
    with pytest.raises(SystemExit):
        main(["calibrate", "--data", str(packed), "--model", str(out / "model"), "--biases", "1,x"])
