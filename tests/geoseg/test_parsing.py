import pytest

from magseg_ray.geoseg.parsing import parse_answer

SIZE = (200, 100)  # width, height


def test_fenced_json_in_thousandths():
    p = parse_answer('Sure.\n```json\n[{"bbox_2d": [100, 200, 500, 600], "label": "pond"}]\n```', "norm1000", SIZE)
    assert p.box == pytest.approx((20, 20, 100, 60)) and p.phrase == "pond" and p.reason == ""


def test_pixels_of_the_resized_image_scale_to_the_original():
    p = parse_answer('{"bbox": [28, 14, 56, 42], "phrase": "field"}', "pixels", SIZE, seen=(56, 28))
    assert p.box == pytest.approx((100, 50, 200, 150))


def test_think_block_is_skipped_but_used_when_it_holds_the_only_box():
    text = '<think>maybe {"box": [0, 0, 10, 10]}</think> {"box": [500, 500, 1000, 1000], "prompt": "farm"}'
    assert parse_answer(text, "norm1000", SIZE).box == pytest.approx((100, 50, 200, 100))
    only = '<think>the answer is {"bbox_2d": [0, 0, 500, 1000], "label": "x"}</think> done'
    assert parse_answer(only, "norm1000", SIZE).box == pytest.approx((0, 0, 100, 100))
    unterminated = '<think>{"bbox_2d": [0, 0, 500, 1000]}'
    assert parse_answer(unterminated, "norm1000", SIZE).box == pytest.approx((0, 0, 100, 100))


def test_corners_as_pairs_key_case_and_string_numbers():
    p = parse_answer('{"BBox_2D": [["10", "20"], [30, 40]], "Label": " road "}', "pixels", SIZE)
    assert p.box == (10, 20, 30, 40) and p.phrase == "road"


def test_reversed_corners_are_kept_for_clamping():
    assert parse_answer('{"bbox_2d": [30, 40, 10, 20]}', "pixels", SIZE).box == (30, 40, 10, 20)


def test_loose_json_by_pattern():
    p = parse_answer("{'bbox_2d': [1, 2, 3, 4], 'label': 'well',}", "pixels", SIZE)
    assert p.box == (1, 2, 3, 4) and p.phrase == "well"


def test_first_object_with_a_box_wins():
    p = parse_answer('[{"label": "no box"}, {"bbox": [1, 2, 3, 4], "label": "b"}, {"bbox": [5, 6, 7, 8]}]', "pixels", SIZE)
    assert p.box == (1, 2, 3, 4) and p.phrase == "b"


def test_paligemma_loc_tokens_are_y_first_over_1024():
    p = parse_answer("<loc0256><loc0512><loc0768><loc1023> field ; <loc0000>", "loc1024", SIZE)
    assert p.box == pytest.approx((100, 25, 200 * 1023 / 1024, 75)) and p.phrase == "field"


@pytest.mark.parametrize("text", ["", "   ", "I cannot find it.", '{"bbox_2d": [1, 2, 3]}', '{"bbox": ["a", 1, 2, 3]}',
                                  '{"bbox": [1, 2, 3, NaN]}', "{{{[[[", '{"label": "pond"}', "\x00\xff" * 10,
                                  "<loc0001><loc0002> half"])
def test_garbage_gives_no_box_and_a_reason(text):
    for convention in ("pixels", "norm1000", "loc1024"):
        p = parse_answer(text, convention, SIZE)
        assert p.box is None and p.reason


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError):
        parse_answer("{}", "percent", SIZE)
