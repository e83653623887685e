import numpy as np
import pytest

from magseg_ray.errors import ModelLoadError
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
    scores, logits = seg.instances(CROP, "field")
    assert logits.shape[1:] == (40, 70) and ((scores >= 0) & (scores <= 1)).all()
    assert np.array_equal(seg(CROP, "field"), (logits > 0).any(0))
    middle = float(np.median(scores))
    seg.score_threshold = middle
    assert np.array_equal(seg(CROP, "field"), (logits[scores >= middle] > 0).any(0))
    seg.score_threshold = 1.0
    assert seg(CROP, "field") is None or (scores >= 1.0).any()


def test_a_folder_of_the_wrong_kind_is_refused(geoseg_presets, tmp_path):
    with pytest.raises(ModelLoadError, match="sam3"):
        PointSegmenter.load(geoseg_presets["sam3"])
    with pytest.raises(ModelLoadError, match="'sam'"):
        TextSegmenter.load(geoseg_presets["sam"])
    with pytest.raises(ModelLoadError, match="config.json"):
        TextSegmenter.load(tmp_path)
