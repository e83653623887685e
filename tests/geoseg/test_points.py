import numpy as np

from magseg_ray.geoseg.points import select_points


def test_local_maxima_above_tau_best_first():
    sim = np.zeros((10, 10))
    sim[2, 3], sim[7, 8], sim[5, 1] = 0.9, 0.6, 0.2
    assert select_points(sim, 5, 0.3, 1) == [(3, 2, 0.9), (8, 7, 0.6)]


def test_top_k_limits_the_count():
    sim = np.zeros((9, 9))
    for i, v in enumerate((0.5, 0.6, 0.7, 0.8)):
        sim[0, 2 * i] = v
    assert [p[2] for p in select_points(sim, 2, 0.3, 0)] == [0.8, 0.7]


def test_nms_drops_a_neighbour_within_the_radius():
    sim = np.zeros((10, 10))
    sim[4, 4], sim[4, 6] = 0.9, 0.8  # 2 px apart: with r = 2 the weaker is not a local maximum
    assert select_points(sim, 5, 0.3, 2) == [(4, 4, 0.9)]
    assert len(select_points(sim, 5, 0.3, 1)) == 2


def test_plateau_gives_one_point_the_first_in_row_major_order():
    sim = np.zeros((6, 6))
    sim[2:4, 2:4] = 0.7
    assert select_points(sim, 5, 0.3, 1) == [(2, 2, 0.7)]


def test_tau_is_inclusive_and_nothing_above_gives_no_points():
    sim = np.full((4, 4), 0.1)
    sim[1, 1] = 0.3
    assert select_points(sim, 5, 0.3, 1) == [(1, 1, 0.3)]
    assert select_points(sim, 5, 0.31, 1) == []
    assert select_points(np.full((3, 3), np.nan), 5, 0.3, 1) == []


def test_a_plateau_wider_than_the_radius_gives_one_point():
    sim = np.zeros((12, 30))
    sim[3:7, 2:25] = 0.8  # 23 px wide, r = 2: every plateau pixel is a local maximum
    sim[10, 28] = 0.5  # a separate peak is still found
    assert select_points(sim, 5, 0.3, 2) == [(2, 3, 0.8), (28, 10, 0.5)]


def test_with_radius_zero_a_plateau_is_still_one_point():
    sim = np.zeros((5, 5))
    sim[1:3, 1:4] = 0.6
    assert select_points(sim, 5, 0.3, 0) == [(1, 1, 0.6)]
