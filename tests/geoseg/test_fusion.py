import numpy as np
import pytest

from magseg_ray.geoseg.fusion import fuse, resize_nearest, valid

BOX = (2, 1, 12, 11)  # 10 x 10 = 100 px
SHAPE = (20, 20)


def crop(*cells):
    m = np.zeros((10, 10), bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_resize_nearest_by_hand():
    m = np.array([[1, 2], [3, 4]])
    assert resize_nearest(m, 4, 4).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    assert resize_nearest(np.arange(4).reshape(1, 4), 1, 2).tolist() == [[1, 3]]


def test_validity_is_area_over_box_area():
    assert valid(crop((0, 0)), BOX, 0.01)          # 1 / 100 >= 0.01
    assert not valid(crop((0, 0)), BOX, 0.02)      # 1 / 100 < 0.02
    assert not valid(crop(), BOX, 0.0)             # empty is never valid
    assert not valid(None, BOX, 0.0)


def test_both_valid_intersect():
    f = fuse(crop((0, 0), (1, 1)), crop((1, 1), (2, 2)), BOX, SHAPE, 0.01)
    assert f.case == "both"
    assert np.argwhere(f.mask).tolist() == [[1 + 1, 2 + 1]]


def test_only_points_valid():
    f = fuse(crop((0, 0), (5, 5)), crop(), BOX, SHAPE, 0.01)
    assert f.case == "points" and f.mask.sum() == 2 and f.mask[1, 2] and f.mask[6, 7]


def test_only_text_valid_and_points_missing():
    f = fuse(None, crop((9, 9)), BOX, SHAPE, 0.01)
    assert f.case == "text" and np.argwhere(f.mask).tolist() == [[10, 11]]


def test_below_gamma_is_invalid_even_if_not_empty():
    f = fuse(crop((0, 0)), crop((0, 0), (0, 1), (0, 2)), BOX, SHAPE, 0.02)
    assert f.case == "text" and f.mask.sum() == 3


def test_none_valid_is_empty_not_the_box():
    f = fuse(crop(), None, BOX, SHAPE, 0.01)
    assert f.case == "none" and not f.mask.any() and f.mask.shape == SHAPE


def test_low_resolution_masks_are_resized_to_the_crop():
    half = np.zeros((5, 5), bool)
    half[:, :1] = True  # left fifth -> columns 0-1 of the 10 x 10 crop
    f = fuse(half, None, BOX, SHAPE, 0.01)
    assert f.case == "points" and f.mask.sum() == 20 and f.mask[1:11, 2:4].all()


@pytest.mark.parametrize("case", ["both", "points", "text", "none"])
def test_nothing_outside_the_box(case):
    full = np.ones((10, 10), bool)
    a = full if case in ("both", "points") else None
    b = full if case in ("both", "text") else None
    f = fuse(a, b, BOX, SHAPE, 0.01)
    assert f.case == case
    outside = f.mask.copy()
    outside[1:11, 2:12] = False
    assert not outside.any()
