import pytest

from magseg_ray.errors import ConfigError
from magseg_ray.geoseg.boxes import box_area, clamp_box, widen_box
from magseg_ray.geoseg.config import ABLATIONS, GeoSegConfig


def test_clamp_rounds_outward_and_clips():
    assert clamp_box((10.2, 20.7, 30.1, 40.0), 100, 50) == (10, 20, 31, 40)
    assert clamp_box((-5, -1, 120, 60), 100, 50) == (0, 0, 100, 50)


def test_clamp_orders_reversed_corners():
    assert clamp_box((30, 40, 10, 20), 100, 100) == (10, 20, 30, 40)


@pytest.mark.parametrize("box", [(120, 10, 150, 20), (-30, -30, -1, -1), (10, 10, 10, 30), (0, 0, float("nan"), 5)])
def test_clamp_refuses_a_box_with_no_pixel_in_the_image(box):
    assert clamp_box(box, 100, 100) is None


def test_widen_is_asymmetric_by_alpha_and_beta():
    # w = 30, h = 20: left/top by 0.2 * (30, 20) = (6, 4); right/bottom by 0.1 * (30, 20) = (3, 2)
    assert widen_box((40, 40, 70, 60), 200, 200, 0.2, 0.1) == (34, 36, 73, 62)


def test_widen_rounds_outward_without_float_noise():
    # 0.1 * 30 is 3.0000000000000004 in floats: still 3 pixels, not 4
    assert widen_box((0, 0, 30, 30), 100, 100, 0.0, 0.1) == (0, 0, 33, 33)
    assert widen_box((10, 10, 15, 15), 100, 100, 0.1, 0.1) == (9, 9, 16, 16)


def test_widen_clips_to_the_image():
    assert widen_box((2, 1, 98, 99), 100, 100, 0.2, 0.1) == (0, 0, 100, 100)
    assert box_area((0, 0, 100, 50)) == 5000


def test_config_defaults_are_the_papers_and_checked():
    c = GeoSegConfig()
    assert (c.alpha, c.beta, c.top_k, c.tau, c.gamma) == (0.2, 0.1, 5, 0.3, 0.01)
    with pytest.raises(ConfigError):
        GeoSegConfig(routes="both-ish")
    with pytest.raises(ConfigError):
        GeoSegConfig(alpha=1.5)
    for overrides in ABLATIONS.values():
        GeoSegConfig(**overrides)
