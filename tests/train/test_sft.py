"""jobs/sft.py end to end: tiny preset, 2 Ray Train workers with DeepSpeed ZeRO-2 on CPU (gloo)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magseg_ray.errors import ChipError, ConfigError, ModelLoadError
from magseg_ray.model.checkpoint import load_model
from magseg_ray.model.presets import build_model
from magseg_ray.train.sft import SFTConfig, answer_loss, check_config, lr_factor

ROOT = Path(__file__).resolve().parents[2]


def sft_main():
    spec = importlib.util.spec_from_file_location("sft_job", ROOT / "jobs" / "sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def args(storage, *switches, **overrides):
    flags = {"data": str(ROOT / "tests/data/naip"), "base": "tiny", "val-fraction": 0.5, "num-workers": 2,
             "max-steps": 6, "checkpoint-every": 2, "eval-every": 3, "batch-size": 4, "val-patches": 4,
             "lr": 1e-3, "warmup-steps": 2, "shuffle-patches": 16, "cpus-per-worker": 0.5, "storage": str(storage), "run-name": "t", **overrides}
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))] + [f"--{s}" for s in switches]


def test_sft_survives_a_killed_worker_and_resumes_on_rerun(ray_cluster, tmp_path, capsys):
    main = sft_main()
    assert main(args(tmp_path, **{"fail-once-at-step": 3, "address": ray_cluster.address})) == 0
    run = tmp_path / "t"
    assert (run / ".failed_at_3").exists()  # worker 1 really died at step 3
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 6
    assert history[-1]["restored_from_step"] == 2  # the group restarted from the step-2 checkpoint
    fixed = [h["fixed_batch_loss"] for h in history if "fixed_batch_loss" in h]
    assert fixed[-1] < fixed[0]  # the loss falls on a fixed batch
    assert 0 <= history[-1]["val_dice"] <= 1 and (run / "curves.png").stat().st_size > 10_000
    assert (run / "adapter" / "adapter_config.json").exists()
    merged, _ = load_model(run / "model")  # the adapter merged into a plain checkpoint that --model takes
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 6

    # the same command with more steps resumes from the last checkpoint instead of starting over
    assert main(args(tmp_path, **{"max-steps": 8, "address": ray_cluster.address})) == 0
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 8 and history[-1]["restored_from_step"] == 6
    assert [h["step"] for h in history if h["step"] <= 6][0] == 0  # one history, carried over


def test_bad_inputs_fail_before_workers_start(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_config(SFTConfig(base=str(tmp_path / "nope"), data="x"))
    with pytest.raises(ConfigError, match="--data is required"):
        check_config(SFTConfig(base="tiny"))
    with pytest.raises(ChipError, match="boundary_width must lie in 0..6"):  # a preset base: no card to check
        check_config(SFTConfig(base="tiny", data="x", boundary_width=7))
    with pytest.raises(ConfigError, match="not a multiple"):
        check_config(SFTConfig(base="tiny", data="x", chip_size=100))
    assert sft_main()(["--data", str(tmp_path), "--base", "tiny", "--storage", str(tmp_path)]) == 2


def test_a_base_built_for_other_prompts_is_refused(tmp_path):
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.card import ModelPrompt, read_model_prompt, write_model_prompt

    save_model(*build_model("tiny"), tmp_path / "base")
    write_model_prompt(tmp_path / "base", ModelPrompt(crop_scale=1.0))
    with pytest.raises(ConfigError, match=r"crop_scale 2.0 \(model: 1.0\)"):
        check_config(SFTConfig(base=str(tmp_path / "base"), data="x"))
    check_config(SFTConfig(base=str(tmp_path / "base"), data="x", crop_scale=1.0))
    # a wider boundary changes the answers, not the prompt layout: a base trained at width 1 may go
    # on at width 4, and the models the run saves record the new width
    wider = SFTConfig(base=str(tmp_path / "base"), data="x", crop_scale=1.0, boundary_width=4)
    check_config(wider)
    (tmp_path / "out").mkdir()
    write_model_prompt(tmp_path / "out", wider.model_prompt())
    assert read_model_prompt(tmp_path / "out").prompt().boundary_width == 4
    card = tmp_path / "base" / "magseg.json"  # a card written before the field existed reads as width 1
    card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "boundary_width"}))
    assert read_model_prompt(tmp_path / "base").boundary_width == 1


def test_answer_format_is_a_flag_recorded_in_the_card(tmp_path):
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.card import ModelPrompt, read_model_prompt, write_model_prompt

    save_model(*build_model("tiny"), tmp_path / "base")
    write_model_prompt(tmp_path / "base", ModelPrompt())  # an R-RLE base may be trained on anchored answers
    cfg = SFTConfig(base=str(tmp_path / "base"), data="x", answer_format="anchored")
    check_config(cfg)
    assert cfg.prompt().answer_format == "anchored"
    write_model_prompt(tmp_path / "base", cfg.model_prompt())
    assert read_model_prompt(tmp_path / "base").prompt().answer_format == "anchored"
    card = tmp_path / "base" / "magseg.json"  # a card written before the field existed reads as R-RLE
    card.write_text(json.dumps({k: v for k, v in json.loads(card.read_text()).items() if k != "answer_format"}))
    assert read_model_prompt(tmp_path / "base").answer_format == "rrle"
    with pytest.raises(SystemExit):  # argparse knows the formats
        sft_main()(["--data", str(tmp_path), "--answer-format", "text4seg"])


def test_ray_job_submit_against_the_local_cluster(ray_cluster, tmp_path):
    import subprocess
    import sys

    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url,
           "--working-dir", str(ROOT), "--", "python", "jobs/sft.py",
           *args(tmp_path, "full", **{"max-steps": 2, "checkpoint-every": 2, "batch-size": 2, "val-patches": 2})]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = tmp_path / "t"
    assert json.loads((run / "metrics.json").read_text())["final"]["step"] == 2
    # --full trains every weight: no adapter, and the saved model differs from the random preset
    assert not (run / "adapter").exists()
    trained, _ = load_model(run / "model")
    base, _ = build_model("tiny", seed=0)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert any("language_model" in n for n in changed) and any("vision_tower" in n for n in changed)


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    factors = [lr_factor(s, warmup=10, total=110) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55) and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # no rise after the warmup
    with pytest.raises(ConfigError, match="warmup_steps"):
        check_config(SFTConfig(base="tiny", data="x", warmup_steps=-1))


def test_answer_mean_loss_weighs_every_patch_the_same():
    from magseg_ray.prompt import PromptConfig, build_patch_prompt
    from magseg_ray.train.batches import collate

    model, processor = build_model("tiny", seed=0)
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 20:] = 1
    labels[40:, 5:9] = 2
    records = []
    for box in [(0, 0, 32, 32), (32, 32, 64, 64), (0, 32, 32, 64)]:  # answers of 3 different lengths
        p = build_patch_prompt(chip, box, PromptConfig(patch_size=32), labels)
        records.append({"images": p.images, "prompt": p.text, "target": p.target})
    assert len({len(r["target"]) for r in records}) == 3
    with torch.no_grad():
        alone = [answer_loss(model, collate(processor, [r]), "token").item() for r in records]
        together = answer_loss(model, collate(processor, records), "answer").item()
        tokens = answer_loss(model, collate(processor, records), "token").item()
    assert together == pytest.approx(np.mean(alone), rel=1e-4)  # left padding and shift line up
    assert tokens != pytest.approx(together, rel=1e-3)  # token mean weighs long answers more


def test_frozen_vision_trains_the_decoder_on_cached_image_tokens(ray_cluster, tmp_path):
    from magseg_ray.model.card import read_model_prompt

    flags = args(tmp_path, "full", "freeze-vision", **{"max-steps": 3, "checkpoint-every": 3, "eval-every": 3,
                                                       "instruction": "short", "address": ray_cluster.address})
    assert sft_main()(flags) == 0
    run = tmp_path / "t"
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert final["patches_per_s"] > 0 and 0 <= final["val_dice"] <= 1
    trained, _ = load_model(run / "model")
    base, _ = build_model("tiny", seed=0)
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, base.state_dict()[n])}
    assert any("language_model" in n for n in changed)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in changed)
    assert read_model_prompt(run / "model").instruction == "short"  # mapping builds the same prompts
    with pytest.raises(ConfigError, match="--freeze-vision"):
        check_config(SFTConfig(base="tiny", data="x", freeze_vision=True, train_vision=True))
