"""Field rules in ground units on hand-made instance rasters where the right answer is known."""

import math

import numpy as np
import shapely
import pytest
from rasterio.transform import from_origin

from magseg_ray.errors import ConfigError
from magseg_ray.fields.rules import FieldRules, apply_rules, close_holes, merge_small, pixel_metres


def test_small_piece_joins_the_neighbour_it_shares_most_edge_with():
    inst = np.zeros((10, 20), np.int32)
    inst[:, :8] = 1  # shares 10 px of edge with piece 3
    inst[:4, 8:12] = 2  # 16 px piece, touching 1 along 4 px and 3 along 4 px... and 4 along 4 px below
    inst[:, 12:] = 3
    inst[4:10, 8:12] = 4  # 24 px: touches 1 along 6 px, 3 along 6 px, 2 along 4
    out = merge_small(inst, min_px=30)
    # 2 (16 px) goes first: edges 1:4, 3:4, 4:4 -> tie to the lowest id, 1; then 4 (24 px) has
    # edges 1: 6 + 4 (from 2) = 10, 3: 6 -> joins 1
    assert set(np.unique(out)) == {1, 3}
    assert (out[:, :12] == 1).all() and (out[:, 12:] == 3).all()


def test_small_pieces_merge_in_chains_and_an_isolated_small_piece_is_dropped():
    inst = np.zeros((10, 30), np.int32)
    inst[:, :10] = 1  # 100 px
    inst[:, 10:12] = 2  # 20 px: joins 1
    inst[2:4, 20:23] = 3  # alone in no-field: dropped
    inst[6:9, 20:22], inst[6:9, 22:24] = 4, 5  # 6 + 6 px, together 12 < 25: both dropped
    out = merge_small(inst, min_px=25)
    assert (out[:, :12] == 1).all()
    assert (out[:, 12:] == 0).all()
    assert merge_small(inst, min_px=5) is inst  # nothing small: unchanged


def test_holes_are_filled_only_when_one_field_alone_encloses_them():
    inst = np.zeros((20, 30), np.int32)
    inst[2:12, 2:12] = 1
    inst[5:8, 5:8] = 0  # a 9 px hole of field 1
    inst[2:12, 15:25] = 2
    inst[5:8, 18:21] = 0  # a hole of field 2 ...
    inst[6, 19] = 3  # ... with a piece of another field in it: not filled
    inst[2:12, 27:30] = 4
    inst[5:7, 28:30] = 0  # a notch open to the raster's edge: not a hole
    out = close_holes(inst, max_px=10)
    assert (out[2:12, 2:12] == 1).all()
    assert out[5, 18] == 0 and out[6, 19] == 3
    assert (out[5:7, 28:30] == 0).all()
    assert (close_holes(inst, max_px=9)[5:8, 5:8] == 0).all()  # the hole is not smaller than 9 px
    unmapped = np.ones(inst.shape, bool)
    unmapped[6, 6] = False  # a hole with unmapped pixels in it is not known to be one
    assert (close_holes(inst, max_px=10, mapped=unmapped)[5:8, 5:8] == 0).all()


def test_rules_in_ground_units_at_two_pixel_sizes():
    inst = np.zeros((40, 40), np.int32)
    inst[:, :20], inst[:, 20:] = 1, 2  # 800 px each
    inst[:4, 18:22] = 3  # 16 px between them
    rules = FieldRules(min_m2=5.0, max_m2=150.0)
    at_half = apply_rules(inst, rules, pixel_m=0.5)  # 3 is 4 m² (< 5): merged; 1 and 2 are 200 m² (> 150): dropped
    assert not at_half.any()
    at_tenth = apply_rules(inst, rules, pixel_m=0.1)  # 3 is 0.16 m²: merged; 1 and 2 are 8 m²: kept
    assert set(np.unique(at_tenth)) == {1, 2} and (at_tenth == 1).sum() + (at_tenth == 2).sum() == 1600
    assert (apply_rules(inst, FieldRules(), pixel_m=0.5) == inst).all()


def test_bad_rules_are_refused_by_name():
    with pytest.raises(ConfigError, match="min_m2 -1"):
        FieldRules(min_m2=-1)
    with pytest.raises(ConfigError, match="simplify_m nan"):
        FieldRules(simplify_m=float("nan"))
    with pytest.raises(ConfigError, match="max_m2 100 is below min_m2 500"):
        FieldRules(min_m2=500, max_m2=100)


def test_pixel_metres_projected_and_geographic():
    assert pixel_metres(from_origin(500000, 4e6, 0.5, 0.5), "EPSG:32615", (10, 10)) == 0.5
    deg = pixel_metres(from_origin(-92.0, 60.0 + 0.5e-5, 1e-5, 1e-5), "EPSG:4326", (1, 1))
    assert deg == pytest.approx(1e-5 * 111_320 * math.cos(math.radians(60.0)), rel=1e-6)


def test_the_cards_rules_where_a_flag_is_minus_one():
    from magseg_ray.fields.rules import resolve_rules
    from magseg_ray.model.card import ModelPrompt

    card = ModelPrompt(field_min_m2=500, field_hole_m2=100, field_simplify_m=2)
    assert resolve_rules(card) == FieldRules(min_m2=500, hole_m2=100, simplify_m=2)
    assert resolve_rules(card, 0, 9000, -1, 0) == FieldRules(max_m2=9000, hole_m2=100)
    assert resolve_rules(ModelPrompt()) == FieldRules()  # a card without them: off
    with pytest.raises(ConfigError, match="min_m2 -2.0"):
        resolve_rules(card, -2)


def test_scene_fields_merges_a_small_piece_in_ground_units_and_simplifies_in_metres():
    from magseg_ray.fields.polygons import scene_fields
    from magseg_ray.masks.schemas import get_schema

    classes = np.ones((60, 60), np.uint8)  # fields3: 1 field, 2 boundary
    classes[:, 30] = 2  # two 30 px wide fields
    classes[20, 31:] = 2  # the right one cut: a 29 x 20 piece at the top
    args = (np.ones((60, 60), np.float32), from_origin(500_000, 4_000_000, 0.5, 0.5), "EPSG:32615", get_schema("fields3"))
    assert len(scene_fields(classes, *args)) == 3
    merged = scene_fields(classes, *args, rules=FieldRules(min_m2=200))  # the top piece is about 150 m² at 0.5 m
    assert len(merged) == 2 and sorted(merged["pixels"]) == [1740, 1860]  # the boundary column goes left
    assert len(scene_fields(classes, *args, rules=FieldRules(min_m2=100))) == 3
    wavy = classes.copy()
    wavy[:, 30] = 1
    wavy[::2, 29] = 2  # a boundary with 1 px teeth
    wavy[1::2, 30] = 2
    plain = scene_fields(wavy, *args)
    smooth = scene_fields(wavy, *args, rules=FieldRules(simplify_m=2.0))  # 4 px: the teeth go
    count = lambda frame: int(shapely.get_num_coordinates(frame.geometry.values).sum())  # noqa: E731
    assert count(smooth) < count(plain)
