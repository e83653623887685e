import numpy as np
import pytest

from magseg_ray.geoseg.grounder import Grounder
from magseg_ray.geoseg.judge import judge, judge_overlay, parse_scores


def test_scores_from_json_and_loose_text():
    s = parse_scores('```json\n{"faithfulness": 4, "localization": 2, "robustness": 5}\n```')
    assert (s["faithfulness"], s["localization"], s["robustness"], s["defaulted"]) == (4, 2, 5, [])
    s = parse_scores("Faithfulness: 5. Localization - 1; robustness 9")
    assert (s["faithfulness"], s["localization"], s["robustness"]) == (5, 1, 3) and s["defaulted"] == ["robustness"]


@pytest.mark.parametrize("text", ["", "no idea", '{"faithfulness": "high"}', "{{{", None])
def test_unparsable_scores_count_three(text):
    s = parse_scores(text)
    assert (s["faithfulness"], s["localization"], s["robustness"]) == (3, 3, 3) and len(s["defaulted"]) == 3


def test_overlay_colours():
    image = np.zeros((1, 3, 3), np.uint8)
    truth, pred = np.array([[1, 1, 0]], bool), np.array([[0, 1, 1]], bool)
    assert judge_overlay(image, truth, pred)[0].tolist() == [[0, 127, 0], [127, 127, 0], [127, 0, 0]]


def test_the_tiny_judge_answers_and_is_scored(geoseg_presets):
    g = Grounder.load(geoseg_presets["grounder"], max_new_tokens=16)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:30] = True
    s = judge(g, image, mask, np.roll(mask, 5, 0), "the field")
    assert all(1 <= s[a] <= 5 for a in ("faithfulness", "localization", "robustness")) and isinstance(s["answer"], str)
