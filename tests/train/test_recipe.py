"""jobs/train_demo.py: the demo model's recipe (vision pretraining, frozen-tower SFT) on the CPU."""

import importlib.util
import json
from pathlib import Path

import torch

from magseg_ray.model.card import read_model_prompt
from magseg_ray.model.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_trains_a_model_that_maps_and_resumes(ray_cluster, tmp_path):
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "jobs" / "train_demo.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    def flags(sft_steps: int) -> list[str]:
        return ["--data", str(ROOT / "tests/data/naip"), "--out", str(tmp_path / "run"), "--base", "tiny",
                "--vision-steps", "2", "--vision-batch-size", "2", "--sft-steps", str(sft_steps), "--batch-size", "2",
                "--num-workers", "1", "--cpus-per-worker", "0.5", "--eval-every", "2", "--checkpoint-every", "2",
                "--val-patches", "2", "--address", ray_cluster.address]

    assert job.main(flags(2)) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["vision"]["final"]["step"] == 2 and metrics["sft"]["final"]["step"] == 2
    card = read_model_prompt(run / "model")
    assert (card.instruction, card.crop_scale, card.boundary_width) == ("short", 1.0, 6)
    # SFT kept the pretrained tower frozen: the model's vision weights are the pretraining's
    model, _ = load_model(run / "model")
    vision, _ = load_model(run / "vision")
    tower = {n: p for n, p in vision.named_parameters() if "vision_tower" in n}
    assert tower and all(torch.equal(p, tower[n]) for n, p in model.named_parameters() if n in tower)
    # a rerun with more SFT steps keeps the pretraining and resumes SFT from its checkpoint
    assert job.main(flags(4)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sft"]["final"]["step"] == 4 and metrics["sft"]["final"]["restored_from_step"] == 2
    assert metrics["vision"]["final"]["step"] == 2
