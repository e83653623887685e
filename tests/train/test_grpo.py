"""GRPO on Ray: weight sync to rollout actors, and jobs/grpo.py end to end (tiny preset, local cluster)."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magseg_ray.chips.pipeline import patch_records
from magseg_ray.model.checkpoint import load_model
from magseg_ray.model.generate import GenerationSettings, answer_patches
from magseg_ray.model.lora import attach_lora
from magseg_ray.prompt import PatchPrompt
from magseg_ray.train.grpo import GRPOConfig
from magseg_ray.train.rollout import PromptSet, RolloutPool, load_policy_base

ROOT = Path(__file__).resolve().parents[2]


def chip_record(seed: int, size: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    classes = np.zeros((size, size), np.uint8)
    classes[:, : size // 2] = 1
    return {"chip_id": f"c{seed}", "split": "train", "chip_png": png.getvalue(), "classes": classes, "error": None}


def test_weight_sync_makes_the_actors_answer_like_the_learner(ray_cluster, tiny_dir):
    import ray
    from peft import get_peft_model_state_dict

    cfg = GRPOConfig(model=str(tiny_dir), data="x", max_new_tokens=24)
    prompt = cfg.prompt()
    chips = [chip_record(0), chip_record(1)]
    keys = PromptSet(chips, prompt).keys()
    assert len(keys) == 8
    val = patch_records(chip_record(2), prompt)
    pool = RolloutPool.start(1, num_cpus=0.25, model_dir=str(tiny_dir), adapter=None, lora=cfg.lora(),
                             prompt=prompt, reward="dice", train_chips=ray.put(chips), val_records=val,
                             max_new_tokens=24)
    try:
        # the learner's policy: a fresh LoRA (version 0 = the base model), then one with changed weights
        model, processor = load_policy_base(tiny_dir)
        torch.manual_seed(0)
        learner = attach_lora(model, cfg.lora()).eval()
        v0 = ray.put(get_peft_model_state_dict(learner))
        with torch.no_grad():
            for i, (name, p) in enumerate(learner.named_parameters()):
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(i))
        v1 = ray.put({k: v.clone() for k, v in get_peft_model_state_dict(learner).items()})
        records = [PromptSet(chips, prompt).record(k) for k in keys]
        prompts = [PatchPrompt(list(r["images"]), r["prompt"], "", r["box"]) for r in records]
        greedy = GenerationSettings(temperature=0.0, max_new_tokens=24)
        local = answer_patches(learner, processor, prompts, prompt, greedy)

        before = pool.rollout(keys, 0, v0, group_size=2, temperature=0.0, seed=0)
        after = pool.rollout(keys, 1, v1, group_size=2, temperature=0.0, seed=0)
        assert before["versions"] == [0] and after["versions"] == [1]  # each result names the version that made it
        texts = [g["texts"][0] for g in after["groups"]]
        assert texts == [a.text for a in local]  # the actor now answers exactly like the learner
        assert texts != [g["texts"][0] for g in before["groups"]]
        assert all(g["texts"][0] == g["texts"][1] for g in after["groups"])  # greedy: a group of equals
        for g in after["groups"]:
            assert all(0 <= r <= 1 for r in g["rewards"]) and g["rewards"] == g["dice"]
        assert after["errors"] == [] and after["answers_per_s"] > 0

        mixed = [keys[5], keys[0], keys[7], keys[1], keys[6]]  # the two chips interleaved: groups come back in order
        again = pool.rollout(mixed, 1, v1, group_size=2, temperature=0.0, seed=0)
        assert [g["key"] for g in again["groups"]] == [tuple(k) for k in mixed]
        assert [g["texts"][0] for g in again["groups"]] == [texts[keys.index(k)] for k in mixed]
        hot = [pool.rollout(keys, 1, v1, group_size=3, temperature=1.0, seed=s)["groups"] for s in (5, 5, 6)]
        assert hot[0] == hot[1] and hot[0] != hot[2]  # sampling follows the seed

        score = pool.evaluate(1, v1)
        assert score["version"] == 1 and 0 <= score["val_dice"] <= 1 and 0 <= score["val_field_iou"] <= 1
    finally:
        pool.shutdown()


def grpo_main():
    spec = importlib.util.spec_from_file_location("grpo_job", ROOT / "jobs" / "grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def args(storage, model, **overrides):
    flags = {"data": str(ROOT / "tests/data/naip"), "model": str(model), "val-fraction": 0.5, "train-chips": 2,
             "val-patches": 3, "group-size": 3, "prompts-per-step": 2, "max-new-tokens": 24, "max-steps": 3,
             "checkpoint-every": 2, "eval-every": 0, "updates-per-rollout": 2, "lr": 5e-3, "num-actors": 1,
             "cpus-per-actor": 0.5, "num-workers": 1, "cpus-per-worker": 0.5, "storage": str(storage),
             "run-name": "g", **overrides}
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


@pytest.mark.slow  # two job runs: about 4.5 min on 2 busy cores
def test_grpo_job_runs_and_resumes(ray_cluster, tiny_dir, tmp_path, capsys):
    main = grpo_main()
    assert main(args(tmp_path, tiny_dir, address=ray_cluster.address)) == 0
    run = tmp_path / "g"
    summary = json.loads((run / "metrics.json").read_text())
    history = summary["history"]
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    steps = history[1:]
    assert all(h["lag"] == 0 and h["policy_version"] == h["step"] and h["dropped"] == 0 for h in steps)
    assert all(0 <= h["reward"] <= 1 and h["kl"] >= 0 and 0 <= h["clip_fraction"] <= 1 for h in steps)
    assert steps[-1]["kl"] > 0  # the policy moved away from the reference
    # one learner, nothing dropped: the answers of every group that varies train, flat groups' do not
    assert all(h["trained_answers"] == (2 - h["zero_std_groups"]) * 3 for h in steps)
    assert summary["start"]["version"] == 0 and summary["final"]["version"] == 3  # same patches, both policies
    assert summary["val_dice_gain"] == summary["final"]["val_dice"] - summary["start"]["val_dice"]
    assert (run / "curves.png").stat().st_size > 10_000 and (run / "adapter" / "adapter_config.json").exists()
    merged, _ = load_model(run / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 3 and out["start_val_dice"] == summary["start"]["val_dice"]

    # the same command with more steps resumes from the last checkpoint instead of starting over
    assert main(args(tmp_path, tiny_dir, address=ray_cluster.address, **{"max-steps": 4})) == 0
    summary = json.loads((run / "metrics.json").read_text())
    assert [h["step"] for h in summary["history"]] == [0, 1, 2, 3, 4]
    assert summary["final"]["restored_from_step"] == 3 and summary["final"]["policy_version"] == 4
    assert summary["start"]["version"] == 0  # the start policy's score is carried over, not redone


def test_bad_input_exits_with_a_message(tmp_path, tiny_dir, capsys):
    assert grpo_main()(args(tmp_path, tiny_dir, **{"group-size": 1})) == 2
    assert "group_size must be >= 2" in capsys.readouterr().err


@pytest.mark.slow  # one job through the Jobs API: about 2-3 min on 2 busy cores
def test_ray_job_submit_against_the_local_cluster(ray_cluster, tiny_dir, tmp_path):
    import subprocess
    import sys

    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url,
           "--working-dir", str(ROOT), "--", "python", "jobs/grpo.py",
           *args(tmp_path, tiny_dir, **{"max-steps": 1, "checkpoint-every": 1, "updates-per-rollout": 1})]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert summary["final"]["step"] == 1 and summary["final"]["lag"] == 0
    assert summary["start"]["version"] == 0 and summary["final"]["version"] == 1
