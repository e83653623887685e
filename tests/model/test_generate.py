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


@pytest.mark.parametrize("greedy", ["kind", "token"])
def test_prefix_reuse_decoder_answers_as_generate_does(tiny, greedy):
    from magseg_ray.model.generate import answer_chip
    from magseg_ray.prompt import patch_boxes

    chip = np.random.default_rng(3).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    cfg = PromptConfig(patch_size=16)
    boxes = patch_boxes(32, 64, 16)
    settings = GenerationSettings(batch_size=3, max_new_tokens=40, greedy=greedy)
    fast = answer_chip(*tiny, chip, boxes, cfg, settings)
    naive = answer_patches(*tiny, [build_patch_prompt(chip, b, cfg) for b in boxes], cfg, settings)
    assert [a.text for a in fast] == [a.text for a in naive]
    assert np.allclose([a.confidence for a in fast], [a.confidence for a in naive], atol=1e-3)


def test_continuous_batching_across_chips_answers_as_generate_does(tiny):
    """Rows of two chips share batches, finished rows leave and queued patches of either chip join:
    the answers are still those of ``generate`` on each whole prompt, in each chip's box order."""
    from magseg_ray.model.batching import answer_chips

    rng = np.random.default_rng(4)
    chips = [rng.integers(0, 256, (32, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)]
    cfg = PromptConfig(patch_size=16)
    boxes = [[(48, 16, 64, 32), (0, 0, 16, 16), (16, 16, 32, 32)], [(0, 0, 16, 16), (16, 48, 32, 64), (0, 32, 16, 48)]]
    settings = GenerationSettings(batch_size=4, max_new_tokens=40)
    fast = answer_chips(*tiny, list(zip(chips, boxes)), cfg, settings)
    for chip, chip_boxes, answers in zip(chips, boxes, fast):
        naive = answer_patches(*tiny, [build_patch_prompt(chip, b, cfg) for b in chip_boxes], cfg, settings)
        assert [a.box for a in answers] == chip_boxes
        assert [a.text for a in answers] == [a.text for a in naive]
        assert np.allclose([a.confidence for a in answers], [a.confidence for a in naive], atol=1e-3)
    assert len({len(a.text) for chip in fast for a in chip}) > 1  # rows really ended at different steps


def test_anchored_answers_decode_strictly_on_both_decoders(tiny):
    from magseg_ray.model.generate import answer_chip
    from magseg_ray.prompt import patch_boxes
    from magseg_ray.rle.anchored import decode as decode_anchored

    chip = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cfg = PromptConfig(patch_size=16, answer_format="anchored")
    boxes = patch_boxes(32, 32, 16)
    sampled = answer_chip(*tiny, chip, boxes, cfg, GenerationSettings(batch_size=4, temperature=1.5, max_new_tokens=60))
    settings = GenerationSettings(batch_size=2, max_new_tokens=40)
    fast = answer_chip(*tiny, chip, boxes, cfg, settings)
    naive = answer_patches(*tiny, [build_patch_prompt(chip, b, cfg) for b in boxes], cfg, settings)
    assert [a.text for a in fast] == [a.text for a in naive]
    for a in sampled + naive:
        assert a.text.startswith("0:") and a.report.ok
        assert np.array_equal(a.mask, decode_anchored(a.text, 16, 16, "fields3", strict=True)[0])


def test_unknown_greedy_rule_is_refused():
    from magseg_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="greedy"):
        GenerationSettings(greedy="beam")


def test_a_model_cards_boundary_bias_reaches_the_mapping_decoder(tmp_path):
    from magseg_ray.errors import ConfigError
    from magseg_ray.map_region import MapConfig, plan
    from magseg_ray.model.card import ModelPrompt, write_model_prompt
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.presets import build_model
    from magseg_ray.model.segmenter import ChipSegmenter

    model, processor = build_model("tiny", seed=0)
    save_model(model, processor, tmp_path)
    assert ChipSegmenter(str(tmp_path), ModelPrompt(), 4, None).settings.boundary_bias == 1.0
    write_model_prompt(tmp_path, ModelPrompt(chip_size=256, boundary_bias=8.0))
    card = plan(MapConfig(model=str(tmp_path))).card  # the mapping run reads the card once, in its plan
    assert ChipSegmenter(str(tmp_path), card, 4, None).settings.boundary_bias == 8.0
    with pytest.raises(ConfigError, match="boundary_bias"):
        GenerationSettings(boundary_bias=0)
