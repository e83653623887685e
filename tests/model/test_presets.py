import re

import numpy as np
import pytest

from magseg_ray.errors import ConfigError
from magseg_ray.model.presets import build_model
from magseg_ray.model.tokenizer import BOI, build_tokenizer
from magseg_ray.prompt import prompt_corpus
from magseg_ray.rle.codec import encode


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    tiny, _ = build_model("tiny")
    small, _ = build_model("small")
    assert n_params(tiny) < 1_000_000
    assert 5_000_000 <= n_params(small) <= 30_000_000


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        build_model("huge")


def test_vocab_matches_model():
    model, processor = build_model("tiny")
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.image_token_index == processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(prompt_corpus())


def test_mask_text_costs_one_token_per_symbol(tokenizer):
    text = "12*f20e2b\n3*b\n*f"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces == ["12", "*", "f", "20", "e", "2", "b", "\n", "3", "*", "b", "\n", "*", "f"]
    assert tokenizer.decode(ids) == text


def test_prompt_words_are_single_tokens_and_decode_exactly(tokenizer):
    for text in prompt_corpus():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        for word in re.findall(r"[A-Za-z]+", text):
            assert tokenizer.tokenize(word) == [word]


def test_any_ascii_round_trips(tokenizer):
    text = "Zebra 12345 x_y {}[]\t~ Patch 0-32 " + BOI
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_random_masks_tokenize_back_to_the_same_text(tokenizer):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = np.repeat(rng.integers(0, 3, (4, 8)), 8, axis=0).repeat(4, axis=1).astype(np.uint8)
        text = encode(mask, "fields3")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert len(ids) <= len(text)


def test_image_tokens_carry_the_image_from_the_start():
    """A zero-initialised projector makes every image token zero, and a preset trained from random
    weights then learns to ignore the image: the preset's image tokens must differ across images
    and across positions of one image."""
    import numpy as np
    import torch

    from magseg_ray.model.presets import build_model
    from magseg_ray.prompt import PromptConfig, build_patch_prompt

    model, processor = build_model("tiny")
    images = [np.zeros((128, 128, 3), np.uint8), np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)]
    feats = []
    for image in images:
        p = build_patch_prompt(image, (0, 0, 32, 32), PromptConfig(local_crop=False))
        enc = processor(text=[p.text], images=[p.images], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            feats.append(model.model.get_image_features(enc["pixel_values"]).pooler_output[0])
    norm = feats[1].norm(dim=-1).mean()
    assert (feats[0] - feats[1]).norm(dim=-1).mean() > 0.1 * norm
    assert (feats[1] - feats[1].mean(0)).norm(dim=-1).mean() > 0.05 * norm
