import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magseg_ray.errors import ModelLoadError
from magseg_ray.geoseg.loading import to_pixels
from magseg_ray.geoseg.segmenters import PointSegmenter, TextSegmenter

CROP = np.random.default_rng(0).integers(0, 255, (40, 70, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["sam", "sam3_tracker"])
def test_point_segmenter_answers_a_crop_mask(geoseg_presets, kind):
    seg = PointSegmenter.load(geoseg_presets[kind])
    for points in ([(10, 10, 0.9)], [(10, 10, 0.9), (60, 30, 0.5)]):
        mask = seg(CROP, points)
        assert mask.shape == (40, 70) and mask.dtype == bool
    assert seg(CROP, []) is None


def test_sam_frame_keeps_the_aspect_and_the_tracker_stretches(geoseg_presets):
    sam = PointSegmenter.load(geoseg_presets["sam"])
    assert sam._frame(40, 80) == ((32, 64), (0.8, 0.8))
    tracker = PointSegmenter.load(geoseg_presets["sam3_tracker"])
    assert tracker._frame(40, 80) == ((112, 112), (112 / 80, 112 / 40))


def test_text_segmenter_keeps_instances_over_the_score_and_unions_them(geoseg_presets):
    seg = TextSegmenter.load(geoseg_presets["sam3"], score_threshold=0.0)
    scores, probs = seg.instances(CROP, "field")
    assert probs.shape[1:] == (40, 70) and ((scores >= 0) & (scores <= 1)).all() and ((probs >= 0) & (probs <= 1)).all()
    assert np.array_equal(seg(CROP, "field"), (probs > 0.5).any(0))
    middle = float(np.median(scores))
    seg.score_threshold = middle
    assert np.array_equal(seg(CROP, "field"), (probs[scores > middle] > 0.5).any(0))
    assert seg.last_score == scores[scores > middle].max()
    seg.score_threshold = 1.0
    assert seg(CROP, "field") is None and seg.last_score is None


def test_a_folder_of_the_wrong_kind_is_refused(geoseg_presets, tmp_path):
    with pytest.raises(ModelLoadError, match="sam3"):
        PointSegmenter.load(geoseg_presets["sam3"])
    with pytest.raises(ModelLoadError, match="'sam'"):
        TextSegmenter.load(geoseg_presets["sam"])
    with pytest.raises(ModelLoadError, match="config.json"):
        TextSegmenter.load(tmp_path)


# Exact pre- and post-processing against a reference: transformers' own SamProcessor (it imports
# here with the PIL image processor), Sam3TrackerProcessor's point scaling, and, where the
# processors need torchvision (Sam2ImageProcessor, Sam3ImageProcessor), their rules as their
# source writes them (transformers 5.23: sam2/image_processing_sam2.py post_process_masks,
# sam3/image_processing_sam3.py post_process_instance_segmentation), on cases computed by hand.

POINTS = [(3, 5, 0.9), (60, 31, 0.5), (69, 39, 0.4)]


def sam_reference(seg):
    """transformers' SamProcessor for the preset's settings (a real SAM folder: longest_edge 1024)."""
    from transformers import SamImageProcessorPil, SamProcessor

    side = seg.image.size[0]
    return SamProcessor(SamImageProcessorPil(size={"longest_edge": side}, pad_size={"height": side, "width": side},
                                             image_mean=list(seg.image.mean), image_std=list(seg.image.std)))


def test_sam_inputs_are_what_sam_processor_makes(geoseg_presets):
    seg = PointSegmenter.load(geoseg_presets["sam"])
    for crop in (CROP, CROP[:, :33], CROP.transpose(1, 0, 2)):
        pixels, xy, labels = seg.prepare(crop, POINTS)
        ref = sam_reference(seg)(images=crop, input_points=[[[[x + 0.5, y + 0.5] for x, y, _ in POINTS]]],
                                 return_tensors="pt")
        assert pixels.shape == ref["pixel_values"].shape == (1, 3, 64, 64)
        assert np.allclose(pixels.numpy(), ref["pixel_values"].numpy(), atol=1e-5)
        assert np.allclose(xy.numpy(), ref["input_points"].numpy(), atol=1e-5)
        assert labels.tolist() == [[[1, 1, 1]]]


def test_sam_mask_upscale_is_sam_processors_post_processing(geoseg_presets):
    seg = PointSegmenter.load(geoseg_presets["sam"])
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 4
    for crop in (CROP, CROP[:, :33]):
        h, w = crop.shape[:2]
        ref = sam_reference(seg)(images=crop, return_tensors="pt")
        expected = sam_reference(seg).post_process_masks(logits[None], ref["original_sizes"], ref["reshaped_input_sizes"])
        got = seg.upscale(logits[0, 0], h, w) > 0
        assert np.array_equal(got.numpy(), expected[0][0, 0].numpy()) and got.any() and not got.all()


def test_a_sam_folder_without_its_processor_config_takes_sam_processors_constants(geoseg_presets, tmp_path):
    import shutil

    from transformers import SamImageProcessorPil

    folder = shutil.copytree(geoseg_presets["sam"], tmp_path / "sam")
    (folder / "preprocessor_config.json").unlink()
    seg, ref = PointSegmenter.load(folder), SamImageProcessorPil()
    assert seg.image.mean == pytest.approx(tuple(ref.image_mean)) and seg.image.std == pytest.approx(tuple(ref.image_std))
    assert seg.image.size == (64, 64)  # the prompt encoder's input size (a real SAM's: 1024, the processor's longest_edge)


def test_sam3_tracker_inputs_by_hand_from_its_config(geoseg_presets):
    """The SAM3 tracker stretches the crop to its square input (112 in the preset, 1008 in the hub's
    folder) and normalises with its config's mean/std (0.5): a one-colour crop gives (c/255 - 0.5)/0.5
    everywhere; points scale as Sam3TrackerProcessor._normalize_coordinates does."""
    from transformers.models.sam3_tracker.processing_sam3_tracker import Sam3TrackerProcessor

    seg = PointSegmenter.load(geoseg_presets["sam3_tracker"])
    assert seg.image.size == (112, 112) and seg.image.mean == seg.image.std == (0.5, 0.5, 0.5)
    crop = np.zeros((40, 70, 3), np.uint8) + np.array([200, 100, 10], np.uint8)
    pixels, xy, _ = seg.prepare(crop, POINTS)
    assert pixels.shape == (1, 3, 112, 112)
    for c, value in enumerate((200, 100, 10)):
        assert torch.allclose(pixels[0, c], torch.tensor((value / 255 - 0.5) / 0.5), atol=1e-6)
    coords = torch.tensor([[[x + 0.5, y + 0.5] for x, y, _ in POINTS]])
    expected = Sam3TrackerProcessor._normalize_coordinates(None, 112, coords, (40, 70))
    assert torch.allclose(xy[0], expected) and xy[0, 0, 1].tolist() == pytest.approx([60.5 * 112 / 70, 31.5 * 112 / 40])


def test_sam3_tracker_mask_upscale_is_one_bilinear_resize_to_the_crop(geoseg_presets):
    """Sam2ImageProcessor.post_process_masks (the SAM3 tracker's): F.interpolate(masks, original_size,
    bilinear, align_corners=False) > 0, one step from the low-resolution mask (no pad to crop away)."""
    seg = PointSegmenter.load(geoseg_presets["sam3_tracker"])
    logits = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 4
    expected = F.interpolate(logits, (40, 70), mode="bilinear", align_corners=False)[0, 0] > 0.0
    assert torch.equal(seg.upscale(logits[0, 0], 40, 70) > 0, expected)
    two_steps = F.interpolate(F.interpolate(logits, (112, 112), mode="bilinear"), (40, 70), mode="bilinear")[0, 0] > 0
    assert not torch.equal(two_steps, expected)  # the rule this test holds tells the two apart


def test_sam3_text_inputs_by_hand_from_its_config(geoseg_presets):
    """SAM3 (text route): resize to the config's size, /255, (x - mean) / std from preprocessor_config.json."""
    seg = TextSegmenter.load(geoseg_presets["sam3"])
    assert seg.image.size == (112, 112) and seg.image.mean == seg.image.std == (0.5, 0.5, 0.5)
    crop = np.zeros((40, 70, 3), np.uint8) + np.array([0, 128, 255], np.uint8)
    pixels = to_pixels(crop, seg.image)
    assert pixels.shape == (1, 3, 112, 112)
    for c, value in enumerate((-1.0, 128 / 255 * 2 - 1, 1.0)):
        assert torch.allclose(pixels[0, c], torch.tensor(value), atol=1e-6)


def test_sam3_text_post_processing_is_the_processors_rule_by_hand():
    """Sam3ImageProcessor.post_process_instance_segmentation: scores = sigmoid(logits) x sigmoid(presence),
    kept when > threshold; masks sigmoid, then bilinear to the target size, then > mask_threshold. Hand
    case: 2 x 2 probabilities 0 / 1 columns resized to 2 x 4 give 0, 0.25, 0.75, 1 across; the
    instance scored exactly at the threshold (0.25), whose mask is the left half, is left out."""
    logits = torch.tensor([0.0, 2.0, -30.0])
    presence = torch.tensor(0.0)
    probabilities = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]] + [[[0.0, 1.0], [0.0, 1.0]]] * 2)  # the first: left
    masks = torch.logit(probabilities.double().clamp(1e-12, 1 - 1e-12)).float()
    scores, probs = TextSegmenter.postprocess(logits, presence, masks, (2, 4))
    assert np.allclose(scores, [0.25, 0.5 / (1 + np.exp(-2.0)), 0.0], atol=1e-6)
    assert np.allclose(probs[1], [[0, 0.25, 0.75, 1]] * 2, atol=1e-6)
    seg = TextSegmenter(None, None, None, score_threshold=0.25, mask_threshold=0.5)
    seg.instances = lambda crop, phrase: (scores, probs)  # the model's output stands in: the rule is tested
    assert np.array_equal(seg(np.zeros((2, 4, 3), np.uint8), "x"), [[False, False, True, True]] * 2)
    assert seg.last_score == pytest.approx(scores[1])  # 0.25 itself is not kept: > threshold, not >=
    seg.mask_threshold = 0.75
    assert np.array_equal(seg(np.zeros((2, 4, 3), np.uint8), "x"), [[False, False, False, True]] * 2)
