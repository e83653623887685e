"""Shared-prefix packing: every answer's loss, log-probs and LoRA gradients as in the unpacked batch.

Tolerance: float32 on CPU, the packed and unpacked forward passes differ only in summation order and
in RoPE's absolute positions (left padding shifts them in the unpacked batch); per-answer losses and
log-probs agree within ``ATOL`` absolute, gradients within ``RTOL`` of the largest gradient entry.
"""

import numpy as np
import pytest
import torch
from transformers import Gemma3ForConditionalGeneration

from magseg_ray.errors import ConfigError
from magseg_ray.model.lora import LoraSettings, attach_lora
from magseg_ray.model.presets import build_model
from magseg_ray.prompt import PromptConfig, build_patch_prompt, patch_boxes
from magseg_ray.train import grpo, packing, sft
from magseg_ray.train.batches import IGNORE, collate, collate_text
from magseg_ray.train.features import ImageFeatureCache

ATOL, RTOL = 2e-5, 1e-4


def tiny_model(attn: str = "sdpa", window: int = 48):
    """The tiny preset with one sliding and one full layer, the window shorter than a packed row
    (and than one prompt, so the window's rule is exercised on unpacked rows too)."""
    base, processor = build_model("tiny", seed=0)
    config = base.config
    config.text_config.layer_types = ["sliding_attention", "full_attention"]
    config.text_config.sliding_window = window
    model = Gemma3ForConditionalGeneration(config)
    model.load_state_dict(base.state_dict())
    model.set_attn_implementation(attn)
    model = attach_lora(model, LoraSettings(r=4, alpha=8))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give both matrices weight, so both get gradient
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval(), processor


def records(config: PromptConfig, chips: int = 2, size: int = 64) -> list[dict]:
    """Patch records of random chips with structured labels (answers of several lengths)."""
    rng = np.random.default_rng(0)
    out = []
    for c in range(chips):
        chip = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        labels = np.ones((size, size), np.uint8)
        labels[rng.integers(size):, : rng.integers(size)] = 0
        labels[:, rng.integers(size)] = 2
        for box in patch_boxes(size, size, config.patch_size):
            p = build_patch_prompt(chip, box, config, labels)
            out.append({"chip_id": f"chip{c}", "box": box, "images": p.images, "prompt": p.text, "target": p.target})
    return out


def per_answer_unpacked(model, batch: dict) -> torch.Tensor:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    return ce.sum(1) / (target != IGNORE).sum(1)


def per_answer_packed(model, batch: dict) -> torch.Tensor:
    logp, answers = packing.token_logprobs(model, batch)
    n = int(answers.max()) + 1
    return torch.zeros(n).index_add(0, answers, -logp) / torch.bincount(answers, minlength=n)


def lora_grads(model) -> torch.Tensor:
    grads = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n])
    model.zero_grad()
    return grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("local_crop", [True, False])
def test_packed_sft_losses_and_lora_gradients_equal_unpacked(attn, local_crop):
    model, processor = tiny_model(attn)
    config = PromptConfig(local_crop=local_crop)
    recs = records(config)
    recs = recs[::2] + recs[1::2]  # chips interleaved: packing regroups them and keeps the record order
    unpacked, packed = collate(processor, recs), packing.pack(processor, recs)
    assert packed["prefix_row"].tolist() == [-1, -1, 0, 0, 1, 1]  # a prefix row per chip, then segment rows
    assert (packed["segment_ids"][2:].max(1).values == 2).all()  # two patches a row: segments meet in a row
    assert packed["attention_mask"].sum() < 0.7 * unpacked["attention_mask"].sum()
    assert (packed["attention_mask"][:2].sum(1) > 48).all()  # a prefix is longer than the sliding window

    alone = per_answer_unpacked(model, unpacked)
    together = per_answer_packed(model, packed)
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)
    assert alone.std() > 0.01  # answers that differ, so a mix-up would show
    for mean in ("answer", "token"):
        sft.answer_loss(model, unpacked, mean).backward()
        expected = lora_grads(model)
        packing.answer_loss(model, packed, mean).backward()
        got = lora_grads(model)
        assert expected.abs().max() > 0 and (got - expected).abs().max() <= RTOL * expected.abs().max()


def test_packing_with_cached_image_tokens_equals_unpacked():
    model, processor = tiny_model()
    recs = records(PromptConfig())
    cache = ImageFeatureCache(model.base_model.model, processor)
    unpacked = {**collate_text(processor, recs), "image_features": cache(recs)}
    packed = packing.pack(processor, recs, features=cache)
    assert len(packed["image_features"]) == 2 + len(recs)  # one chip image per row, one crop per patch
    torch.testing.assert_close(packing.answer_loss(model, packed), sft.answer_loss(model, unpacked), atol=ATOL, rtol=0)


def test_grpo_group_shares_its_whole_prompt():
    model, processor = tiny_model()
    recs = records(PromptConfig(), chips=1)[:2]
    targets = [recs[0]["target"], recs[1]["target"], "*f", "*b"]  # G = 4 answers per prompt
    answers = [{**r, "target": t} for r in recs for t in targets]
    unpacked, packed = collate(processor, answers), packing.pack(processor, answers, share="prompt")
    assert packed["prefix_row"].tolist() == [-1, -1, 0, 1] and int((packed["segment_ids"] == 0).sum()) > 0
    labels = unpacked.pop("labels")
    expected, expected_mask = grpo.answer_logprobs(model, unpacked, labels, temperature=0.7)
    got, mask = packing.answer_logprobs(model, packed, temperature=0.7)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    advantage = torch.linspace(-1, 1, len(answers))
    grpo.grpo_loss(expected, expected.detach() + 0.05, expected.detach(), advantage, expected_mask)[0].backward()
    reference = lora_grads(model)
    grpo.grpo_loss(got, got.detach() + 0.05, got.detach(), advantage, mask)[0].backward()
    assert (lora_grads(model) - reference).abs().max() <= RTOL * reference.abs().max()


def test_image_blocks_attend_both_ways_and_segments_never_meet():
    model, processor = tiny_model()
    packed = packing.pack(processor, records(PromptConfig(), chips=1))
    assert packed["prefix_row"].tolist() == [-1, 0, 0]
    fields = ("segment_ids", "position_ids", "token_type_ids")
    n = int(packed["attention_mask"][0].sum())
    prefix = {k: packed[k][:1, :n] for k in fields}
    alone = packing.attention_masks(prefix, n, model.config, torch.float32)["full_attention"][0, 0]
    first = int(prefix["token_type_ids"][0].nonzero()[0])
    assert alone[first, first + 1] and not alone[first - 1, first]  # the chip's image block both ways, text causal
    row = {k: torch.cat([prefix[k], packed[k][1:2]], 1) for k in fields}
    masks = packing.attention_masks(row, packed["input_ids"].shape[1], model.config, torch.float32)
    full, sliding = masks["full_attention"][0, 0], masks["sliding_attention"][0, 0]
    segment = packed["segment_ids"][1]
    one, two = (segment == 1).nonzero()[:, 0], (segment == 2).nonzero()[:, 0]
    assert not full[two][:, n + one].any() and full[two][:, :n].all()  # its prefix, never the other segment
    crop = int(packed["token_type_ids"][1, two].nonzero()[0, 0])
    assert full[two[crop], n + two[crop] + 1]  # the patch's crop block both ways
    assert sliding[two[0], n - 1] and not sliding[two[-1], 0]  # the window cuts the prefix's start


def test_bad_records_are_refused_by_name():
    _, processor = build_model("tiny")
    rec = records(PromptConfig(), chips=1)[0]
    with pytest.raises(ConfigError, match="chip0.*Patch"):
        packing.pack(processor, [{**rec, "prompt": rec["prompt"].replace("\nPatch ", "\n")}])
    with pytest.raises(ConfigError, match="share must be one of"):
        packing.pack(processor, [rec], share="scene")


def test_draw_takes_a_chip_at_a_time():
    import random

    buffer = [{"chip_id": c, "box": (i, 0, i + 32, 32)} for c in "abc" for i in range(0, 160, 32)]
    picked = packing.draw(buffer, random.Random(0), 7, 3)
    chips = [r["chip_id"] for r in picked]
    assert len(picked) == 7 and len(buffer) == 8
    assert len(set(chips[:3])) == 1 and len(set(chips[3:6])) == 1  # 3 + 3 + 1 from (at most) 3 chips
    assert not any(r in buffer for r in picked)


def job(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"{name}_job", Path(__file__).resolve().parents[2] / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def flags(**values) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k}", str(v))]


@pytest.mark.slow  # about 1-2 min on 2 busy cores
def test_sft_job_trains_packed(ray_cluster, tmp_path):
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "tests/data/naip"
    assert job("sft")(flags(data=data, base="tiny", **{"val-fraction": 0.5, "num-workers": 2, "max-steps": 6,
                                                        "checkpoint-every": 6, "eval-every": 6, "batch-size": 8,
                                                        "pack": 4, "val-patches": 4, "lr": 1e-3, "warmup-steps": 2,
                                                        "shuffle-patches": 64, "cpus-per-worker": 0.5,
                                                        "storage": tmp_path, "run-name": "p",
                                                        "address": ray_cluster.address})) == 0
    history = json.loads((tmp_path / "p" / "metrics.json").read_text())["history"]
    assert history[-1]["step"] == 6 and history[-1]["patches_per_s"] > 0
    assert history[-1]["fixed_batch_loss"] < history[0]["fixed_batch_loss"]  # the packed loss trains


@pytest.mark.slow  # about 2 min on 2 busy cores
def test_grpo_job_learns_from_packed_groups(ray_cluster, tiny_dir, tmp_path):
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "tests/data/naip"
    assert job("grpo")(flags(data=data, model=tiny_dir, **{
        "val-fraction": 0.5, "train-chips": 2, "val-patches": 3, "group-size": 3, "prompts-per-step": 2,
        "max-new-tokens": 24, "max-steps": 2, "checkpoint-every": 2, "eval-every": 0, "updates-per-rollout": 2,
        "lr": 5e-3, "num-actors": 1, "cpus-per-actor": 0.5, "num-workers": 1, "cpus-per-worker": 0.5,
        "storage": tmp_path, "run-name": "g", "address": ray_cluster.address}) + ["--pack"]) == 0
    steps = json.loads((tmp_path / "g" / "metrics.json").read_text())["history"][1:]
    assert [h["step"] for h in steps] == [1, 2]
    trained = [h for h in steps if h["trained_answers"]]
    assert trained and all(h["kl"] >= 0 and 0 <= h["clip_fraction"] <= 1 for h in trained)
    assert steps[-1]["kl"] > 0  # the policy moved away from the reference


def test_a_chips_patches_pack_with_gemmas_tokenizer(gemma3_dir):
    # Gemma writes " x" as one piece: a prefix cut after "Patch " would not be the start of the
    # whole prompts' tokens, and packing would refuse every chip of a real Gemma3.
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(gemma3_dir, local_files_only=True)
    recs = records(PromptConfig(local_crop=False), chips=1)
    batch = packing.pack(processor, recs)
    assert int((batch["prefix_row"] < 0).sum()) == 1  # the chip's prefix once, its patches after it
    answers = batch["labels"][batch["labels"] != IGNORE]
    expected = sum(len(processor.tokenizer(r["target"] + "<end_of_turn>", add_special_tokens=False)["input_ids"])
                   for r in recs)
    assert len(answers) == expected
