"""Frozen-tower training inputs: text-only collation and cached image tokens match the processor path."""

import numpy as np
import pytest
import torch

from magseg_ray.model.presets import build_model
from magseg_ray.prompt import PromptConfig, build_patch_prompt, patch_boxes
from magseg_ray.train.batches import collate, collate_text
from magseg_ray.train.features import ImageFeatureCache
from magseg_ray.train.sft import answer_loss


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_model("tiny", seed=0)
    return model.eval(), processor


def _records(prompt: PromptConfig, n_chips: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for c in range(n_chips):
        chip = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        labels = (rng.random((64, 64)) < 0.5).astype(np.uint8)
        labels[:, :20] = 1
        for box in patch_boxes(64, 64, 32):
            p = build_patch_prompt(chip, box, prompt, labels=labels)
            records.append({"chip_id": f"chip{c}", "box": box, "images": p.images, "prompt": p.text, "target": p.target})
    return records


@pytest.mark.parametrize("instruction", ["natural", "short"])
def test_text_collation_equals_processor(tiny, instruction):
    _, processor = tiny
    records = _records(PromptConfig(crop_scale=1.0, instruction=instruction))
    full, text = collate(processor, records), collate_text(processor, records)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(full[key], text[key]), key


def test_short_instruction_is_short(tiny):
    _, processor = tiny
    lengths = {s: collate_text(processor, _records(PromptConfig(instruction=s), 1))["input_ids"].shape[1]
               for s in ("natural", "short")}
    assert lengths["natural"] - lengths["short"] > 60


def test_cached_tokens_give_the_same_loss(tiny):
    model, processor = tiny
    records = _records(PromptConfig(crop_scale=1.0))
    cache = ImageFeatureCache(model, processor)
    with torch.no_grad():
        expected = answer_loss(model, collate(processor, records))
        got = answer_loss(model, {**collate_text(processor, records), "image_features": cache(records)})
    assert torch.allclose(expected, got, atol=1e-5)
    # two chips: each chip image once, each crop once
    assert cache.computed == 2 + len(records)
    cache(records[:3])
    assert cache.computed == 2 + len(records)  # all hits
