"""GRPO advantages, loss and rewards against hand-computed values; bad inputs."""

import math

import numpy as np
import pytest
import torch

from magseg_ray.errors import ConfigError, ModelLoadError
from magseg_ray.masks.schemas import get_schema
from magseg_ray.train.grpo import GRPOConfig, answer_logprobs, check_config, group_advantages, grpo_loss, step_keys
from magseg_ray.train.rewards import boundary_f, dice, get_reward, instance_iou, score_answers

NAN = float("nan")


def test_group_advantages_by_hand():
    rewards = [[1.0, 0.0, 0.5, 0.5],  # mean 0.5, sample std sqrt(0.5 / 3)
               [0.3, 0.3, 0.3, 0.3],  # all equal: no signal, advantage 0 (not NaN)
               [0.2, NAN, 0.8, 0.5],  # one answer dropped: mean 0.5 and std 0.3 of the other three
               [NAN, 0.7, NAN, NAN]]  # one scored answer: no group to compare with
    adv = group_advantages(np.array(rewards), scale=True, eps=1e-4)
    s = math.sqrt(0.5 / 3) + 1e-4
    expected = [[0.5 / s, -0.5 / s, 0, 0], [0, 0, 0, 0], [-0.3 / 0.3001, NAN, 0.3 / 0.3001, 0], [NAN, 0, NAN, NAN]]
    np.testing.assert_allclose(adv, expected, rtol=1e-9, atol=1e-12)
    dr = group_advantages(np.array(rewards), scale=False)  # Dr.GRPO: no std
    expected_dr = [[0.5, -0.5, 0, 0], [0, 0, 0, 0], [-0.3, NAN, 0.3, 0], [NAN, 0, NAN, NAN]]
    np.testing.assert_allclose(dr, expected_dr, atol=1e-12)


def _toy():
    log = math.log
    logp = torch.tensor([[log(0.5), log(0.3)], [log(0.2), 0.0]])
    old = torch.tensor([[log(0.4), log(0.3)], [log(0.4), 0.0]])
    ref = torch.tensor([[log(0.5), log(0.6)], [log(0.2), 0.0]])
    mask = torch.tensor([[True, True], [True, False]])  # the second answer has one token
    return logp, old, ref, torch.tensor([1.0, -2.0]), mask


def test_grpo_loss_by_hand():
    logp, old, ref, adv, mask = _toy()
    # ratios 1.25 (A=+1: clipped to 1.2), 1.0, and 0.5 (A=-2: clipped to 0.8); k3 KL 0, 2 - ln 2 - 1, 0
    pg = [-1.2, -1.0, 1.6]
    kl = [0.0, 1 - math.log(2), 0.0]
    beta = 0.1
    token = [p + beta * k for p, k in zip(pg, kl)]
    loss, stats = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, beta, "token")
    assert loss.item() == pytest.approx(sum(token) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3) and stats["kl"] == pytest.approx(sum(kl) / 3)
    loss, _ = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, beta, "sequence")
    assert loss.item() == pytest.approx(((token[0] + token[1]) / 2 + token[2]) / 2)
    # asymmetric clip (DAPO's clip-higher): 1.25 < 1.3 is no longer clipped
    loss, stats = grpo_loss(logp, old, ref, adv, mask, 0.2, 0.3, beta, "token")
    assert loss.item() == pytest.approx((-1.25 + token[1] + token[2]) / 3)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)


def test_on_policy_gradient_is_advantage_weighted_log_likelihood():
    logp, _, ref, adv, mask = _toy()
    logp = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.0)
    loss.backward()
    assert stats["ratio"] == 1 and stats["clip_fraction"] == 0
    np.testing.assert_allclose(logp.grad.numpy(), [[-1 / 3, -1 / 3], [2 / 3, 0]], rtol=1e-6)


def test_answer_logprobs_match_a_full_forward(tiny_dir):
    from magseg_ray.model.checkpoint import load_model
    from magseg_ray.prompt import PromptConfig, build_patch_prompt
    from magseg_ray.train.batches import IGNORE, collate

    model, processor = load_model(tiny_dir)
    chip = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = build_patch_prompt(chip, (0, 0, 32, 32), PromptConfig())
    records = [{"prompt": p.text, "images": p.images, "target": t} for t in ("*b", "f20e2b\n*b")]
    batch = collate(processor, records)
    labels = batch.pop("labels")
    with torch.no_grad():
        logp, mask = answer_logprobs(model, batch, labels, temperature=0.7)
        full = torch.log_softmax(model(**batch).logits.float() / 0.7, -1)
    assert mask.sum(1).tolist() == [(lab != IGNORE).sum() for lab in labels]
    n = mask.shape[1]
    for row in range(2):
        for t in range(n):
            if mask[row, t]:
                pos = labels.shape[1] - n + t  # the token at pos is predicted by the logits at pos - 1
                assert logp[row, t].item() == pytest.approx(full[row, pos - 1, labels[row, pos]].item(), abs=1e-5)


def test_rewards_and_dropped_answers():
    schema = get_schema("fields3")
    truth = np.zeros((8, 8), np.uint8)
    truth[:, :4] = 1
    empty = np.zeros((8, 8), np.uint8)
    assert dice(truth, truth, schema) == 1.0 and dice(empty, truth, schema) == pytest.approx(0.5 * 2 * 32 / 96)
    assert boundary_f(empty, empty, schema) == 1.0 and boundary_f(np.ones_like(empty), empty, schema) == 0.0
    assert instance_iou(empty, empty, schema) == 1.0 and instance_iou(truth, empty, schema) == 0.0
    assert instance_iou(truth, truth, schema) == 1.0

    calls = []

    def flaky(pred, t, s):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return NAN if len(calls) == 3 else dice(pred, t, s)

    rewards, errors = score_answers(flaky, [truth, truth, truth, empty], [truth] * 4, schema)
    assert rewards[0] == 1.0 and np.isnan(rewards[1]) and np.isnan(rewards[2]) and rewards[3] < 1
    assert len(errors) == 2 and "boom" in errors[0] and "nan" in errors[1]
    adv = group_advantages(rewards[None])  # the dropped answers take no part, the others still compare
    assert np.isnan(adv[0, 1]) and np.isnan(adv[0, 2]) and adv[0, 0] > 0 > adv[0, 3]

    assert get_reward("dice") is dice and get_reward("magseg_ray.train.rewards:instance_iou") is instance_iou
    with pytest.raises(ConfigError, match="unknown reward"):
        get_reward("nope")
    with pytest.raises(ConfigError, match="cannot load reward"):
        get_reward("magseg_ray.train.rewards:nope")


def test_step_keys_cover_the_pool_once_per_pass_and_repeat_on_resume():
    first = [k for s in range(5) for k in step_keys(10, s, 2, seed=3)]
    assert sorted(first) == list(range(10))
    assert step_keys(10, 3, 2, seed=3) == first[6:8]  # a pure function of the step: a resumed run asks the same
    assert step_keys(10, 5, 2, seed=3) != step_keys(10, 5, 2, seed=4)


def test_bad_inputs_fail_before_workers_start(tiny_dir, tmp_path):
    from magseg_ray.model.lora import attach_lora
    from magseg_ray.model.presets import build_model

    ok = dict(model=str(tiny_dir), data="x")
    check_config(GRPOConfig(**ok))
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        check_config(GRPOConfig(**ok, group_size=1))
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_config(GRPOConfig(model=str(tmp_path / "nope"), data="x"))
    with pytest.raises(ConfigError, match="unknown reward"):
        check_config(GRPOConfig(**ok, reward="iou"))
    # an adapter trained on another base (the small preset) does not fit the tiny model
    small, _ = build_model("small")
    attach_lora(small).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match="does not fit"):
        check_config(GRPOConfig(**ok, adapter=str(tmp_path / "adapter")))


def test_prompt_settings_follow_the_model_card(tiny_dir, tmp_path):
    import shutil

    from magseg_ray.model.card import ModelPrompt, read_model_prompt, write_model_prompt

    model = shutil.copytree(tiny_dir, tmp_path / "model")
    write_model_prompt(model, ModelPrompt(patch_size=16, crop_scale=1.0, boundary_width=4, answer_format="anchored"))
    cfg = GRPOConfig(model=str(model), data="x")
    check_config(cfg)
    prompt = cfg.prompt()  # rollouts sample and decode in the card's answer format
    assert (prompt.patch_size, prompt.crop_scale, prompt.boundary_width, prompt.answer_format) == (16, 1.0, 4, "anchored")
    assert read_model_prompt(tiny_dir) is None and GRPOConfig(model=str(tiny_dir)).prompt().crop_scale == 2.0
    with pytest.raises(ConfigError, match=r"crop_scale 2.0 \(model: 1.0\)"):
        check_config(GRPOConfig(model=str(model), data="x", crop_scale=2.0))


def test_checking_inputs_does_not_import_ray(tiny_dir, tmp_path):
    """jobs/grpo.py checks its inputs before ray_session sets Ray's environment (token auth,
    loopback), which Ray reads at import: the check must not import Ray."""
    import subprocess
    import sys

    from magseg_ray.model.checkpoint import load_model
    from magseg_ray.model.lora import attach_lora

    attach_lora(load_model(tiny_dir)[0]).save_pretrained(tmp_path / "adapter")
    code = ("import sys; from magseg_ray.train.grpo import GRPOConfig, check_config; "
            f"check_config(GRPOConfig(model={str(tiny_dir)!r}, adapter={str(tmp_path / 'adapter')!r}, data='x')); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
