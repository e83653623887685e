import numpy as np
import pytest

from magseg_ray.geoseg.grounder import Grounder
from magseg_ray.geoseg.judge import judge, judge_overlay, parse_scores, summarise_judge


def test_scores_from_json_and_loose_text():
    s = parse_scores('```json\n{"faithfulness": 4, "localization": 2, "robustness": 5}\n```')
    assert (s["faithfulness"], s["localization"], s["robustness"], s["unparsed"]) == (4, 2, 5, [])
    s = parse_scores("Faithfulness: 5. Localization - 1; robustness 9")
    assert (s["faithfulness"], s["localization"], s["robustness"]) == (5, 1, None) and s["unparsed"] == ["robustness"]


@pytest.mark.parametrize("text", ["", "no idea", '{"faithfulness": "high"}', "{{{", None])
def test_unparsable_scores_are_none_and_counted_not_defaulted(text):
    s = parse_scores(text)
    assert (s["faithfulness"], s["localization"], s["robustness"]) == (None, None, None) and len(s["unparsed"]) == 3


def test_the_summary_averages_given_scores_only_and_counts_the_rest():
    scores = [parse_scores('{"faithfulness": 5, "localization": 1, "robustness": 2}'), parse_scores("no idea"),
              parse_scores('{"faithfulness": 4}')]
    s = summarise_judge(scores)
    assert (s["faithfulness"], s["localization"], s["robustness"]) == (4.5, 1, 2) and s["judged"] == 3
    assert (s["faithfulness_unparsed"], s["localization_unparsed"], s["robustness_unparsed"]) == (1, 2, 2)
    assert summarise_judge([parse_scores("")])["faithfulness"] is None


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
    assert all(s[a] is None or 1 <= s[a] <= 5 for a in ("faithfulness", "localization", "robustness"))
    assert isinstance(s["answer"], str) and len(s["unparsed"]) == sum(s[a] is None for a in ("faithfulness", "localization", "robustness"))
