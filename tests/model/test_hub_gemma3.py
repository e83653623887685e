"""The mapping model's load and decode paths on a Gemma3 folder laid out as the hub's, with a
Gemma-kind tokenizer (every digit its own token, ``▁word`` pieces, byte fallback, multi-letter
pieces made of class codes): ``tests/hub/gemma3.py``. Random weights: answers are arbitrary but
must be well-formed mask text, however the grammar meets this vocabulary."""

import numpy as np
import pytest
import torch

from magseg_ray.errors import ConfigError
from magseg_ray.model.batching import answer_chips
from magseg_ray.model.checkpoint import load_model, resolve_dtype
from magseg_ray.model.generate import GenerationSettings, answer_patches
from magseg_ray.prompt import PromptConfig, build_patch_prompt, patch_boxes
from magseg_ray.rle import codec_for
from magseg_ray.train.batches import IGNORE, collate

CHIP = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
NO_CROP = PromptConfig(local_crop=False)  # the scale plan's 4B layout: the chip's image tokens only


@pytest.fixture(scope="module")
def gemma3(gemma3_dir):
    return load_model(gemma3_dir)


def test_the_folder_loads_with_gemmas_ids_and_tokenizer(gemma3):
    model, processor = gemma3
    tok = processor.tokenizer
    assert type(processor).__name__ == "Gemma3Processor" and model.dtype == torch.float32  # auto on the CPU
    assert (tok.bos_token_id, tok.image_token_id, len(tok)) == (2, 262144, 262145)
    assert model.config.text_config.vocab_size == 262208  # padded past the tokenizer, as the 4B's
    assert tok.tokenize("f12") == ["f", "1", "2"]  # one token per digit


def test_shared_prefix_decoding_splits_gemmas_prompt_and_answers_as_patch_by_patch(gemma3):
    # Failed before: the prefix ended with "Patch " and Gemma writes " x" as one piece, so the
    # whole prompt did not split at the prefix (ChipError "use answer_patches") without a crop.
    model, processor = gemma3
    settings = GenerationSettings(batch_size=4, max_new_tokens=24)
    boxes = patch_boxes(64, 64, 32)
    chips = answer_chips(model, processor, [(CHIP, boxes)], NO_CROP, settings)[0]
    alone = answer_patches(model, processor, [build_patch_prompt(CHIP, b, NO_CROP) for b in boxes], NO_CROP, settings)
    assert [a.text for a in chips] == [a.text for a in alone]


def test_answers_are_well_formed_mask_text_in_single_digit_tokens(gemma3):
    model, processor = gemma3
    answers = answer_chips(model, processor, [(CHIP, patch_boxes(64, 64, 32))], NO_CROP,
                           GenerationSettings(batch_size=4))[0]  # the full budget: the longest mask text
    for a in answers:
        assert not any(vars(a.report).values()), (a.text, a.report)  # no repair: the grammar held
        assert codec_for("rrle").decode(a.text, 32, 32, "fields3", strict=True)[0].shape == (32, 32)


def test_sft_labels_are_exactly_the_answer_tokens(gemma3):
    _, processor = gemma3
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 20:] = 1
    prompt = build_patch_prompt(CHIP, (0, 0, 32, 32), NO_CROP, labels)
    enc = collate(processor, [{"prompt": prompt.text, "images": prompt.images, "target": prompt.target}])
    answer = enc["labels"][0][enc["labels"][0] != IGNORE]
    assert processor.tokenizer.decode(answer) == prompt.target + "<end_of_turn>"
    assert len(answer) == len(processor.tokenizer.tokenize(prompt.target)) + 1


def test_dtype_choice(gemma3_dir):
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype(None) == torch.float32
    assert load_model(gemma3_dir, "bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        resolve_dtype("fp8")
