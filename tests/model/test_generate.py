import numpy as np
import pytest

from magseg_ray.model.checkpoint import load_model
from magseg_ray.model.generate import GenerationSettings, answer_patches, segment_chip
from magseg_ray.prompt import PromptConfig, build_patch_prompt
from magseg_ray.rle.codec import decode


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir)


def test_segment_chip_places_every_patch_answer(tiny):
    chip = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    cfg = PromptConfig(patch_size=16)
    mask, confidence, answers = segment_chip(*tiny, chip, cfg, GenerationSettings(batch_size=5, temperature=1.0))
    assert mask.shape == (64, 96) and confidence.shape == (4, 6) and len(answers) == 24
    for a in answers:
        x0, y0, x1, y1 = a.box
        assert a.report.ok
        assert np.array_equal(mask[y0:y1, x0:x1], decode(a.text, 16, 16, "fields3", strict=True)[0])
        assert 0 < a.confidence <= 1 and confidence[y0 // 16, x0 // 16] == np.float32(a.confidence)


def test_greedy_answers_do_not_depend_on_batching(tiny):
    chip = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = PromptConfig(patch_size=8)
    prompts = [build_patch_prompt(chip, (x, 0, x + 8, 8), cfg) for x in range(0, 64, 8)]
    one = answer_patches(*tiny, prompts, cfg, GenerationSettings(batch_size=1, max_new_tokens=40))
    four = answer_patches(*tiny, prompts, cfg, GenerationSettings(batch_size=4, max_new_tokens=40))
    assert [a.text for a in one] == [a.text for a in four]
    assert all(a.report.ok for a in one)
