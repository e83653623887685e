"""The edge split on hand-made scenes: two fields of different tone in one piece, one textured field."""

import numpy as np
import pytest
from rasterio.transform import from_origin

from magseg_ray.errors import ConfigError
from magseg_ray.fields.edges import edge_strength, split_at_edges
from magseg_ray.fields.rules import FieldRules, apply_rules


def _two_tones(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 120 x 200 px piece (id 5) over two fields of 120 x 100 px, darker left, lighter right, with
    noise; pixels outside the piece (a 10 px frame) are grey."""
    rng = np.random.default_rng(seed)
    image = np.full((140, 220, 3), 128.0)
    image[10:130, 10:110] = (60, 110, 40)
    image[10:130, 110:210] = (110, 150, 70)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    inst = np.zeros((140, 220), np.int32)
    inst[10:130, 10:210] = 5
    return inst, image


def test_a_piece_over_two_fields_of_different_tone_splits_at_their_edge():
    inst, image = _two_tones()
    out = split_at_edges(inst, image, quantile=0.85, sigma_px=2, depth_px=12, core_px=1000)
    assert (out[inst == 0] == 0).all() and (out[inst > 0] > 0).all()  # no pixel lost or added
    left, right = out[10:130, 10:110], out[10:130, 110:210]
    assert (left == 5).mean() > 0.97 and (right == 6).mean() > 0.97  # the first core keeps the id
    assert set(np.unique(out)) == {0, 5, 6}
    assert (inst == 5).sum() == 24_000 and (split_at_edges(inst, image, 0.85, 2, 12, 1000) == out).all()


def test_texture_leaves_no_deep_core_and_the_piece_stays_whole():
    rng = np.random.default_rng(1)
    inst = np.zeros((140, 220), np.int32)
    inst[10:130, 10:210] = 3
    image = rng.integers(0, 255, (140, 220, 3)).astype(np.uint8)  # edges everywhere, none across
    image[10:130, 10:210:6] = 0  # crop rows every 6 px
    out = split_at_edges(inst, image, quantile=0.5, sigma_px=1, depth_px=12, core_px=1000)
    assert (out == inst).all()


def test_small_pieces_and_small_cores_are_not_split():
    inst, image = _two_tones()
    assert (split_at_edges(inst, image, 0.85, 2, 12, core_px=12_001) == inst).all()  # piece < 2 cores
    assert (split_at_edges(inst, image, 0.85, 2, depth_px=60, core_px=10) == inst).all()  # no core that deep
    assert (split_at_edges(np.zeros_like(inst), image, 0.85, 2, 12, 10) == 0).all()


def test_the_split_runs_first_in_ground_units_and_needs_the_image():
    inst, image = _two_tones()
    rules = FieldRules(edge_quantile=0.85, edge_sigma_m=1.0, edge_depth_m=6.0, edge_core_m2=250.0, min_m2=100.0)
    out = apply_rules(inst, rules, pixel_m=0.5, image=image)  # 2 px, 12 px, 1,000 px at 0.5 m
    assert set(np.unique(out)) == {0, 5, 6}
    assert (apply_rules(inst, FieldRules(edge_quantile=0.85, edge_core_m2=1e6), 0.5, image=image) == inst).all()
    with pytest.raises(ConfigError, match="needs the scene image"):
        apply_rules(inst, rules, pixel_m=0.5)
    with pytest.raises(ConfigError, match="not H x W x bands"):
        split_at_edges(inst, image[:-1], 0.85, 2, 12, 1000)
    with pytest.raises(ConfigError, match="edge_quantile 1"):
        FieldRules(edge_quantile=1.0)
    with pytest.raises(ConfigError, match="edge_depth_m -1"):
        FieldRules(edge_depth_m=-1)
    with pytest.raises(ConfigError, match="edge_sigma_m 0"):
        FieldRules(edge_quantile=0.85, edge_sigma_m=0)


def test_a_band_without_contrast_on_the_fields_counts_for_nothing():
    _, image = _two_tones()
    flat = image.copy()
    flat[..., 2] = 7
    field = np.ones(image.shape[:2], bool)
    strength = edge_strength(flat, field, 2.0)
    assert np.isfinite(strength).all()
    assert np.allclose(strength, edge_strength(flat[..., :2], field, 2.0))


def test_an_image_with_a_margin_sees_past_the_rasters_edge():
    """The image grown by a margin (a tile's window read with more of its scene): mirrored, the split is
    the split of the raster's own image (SciPy mirrors at the edge); what lies beyond counts."""
    from magseg_ray.fields.edges import reach_px

    inst, image = _two_tones()
    inst, image = inst[:, 10:], image[:, 10:]  # the piece reaches the raster's left edge
    m = reach_px(2)
    own = split_at_edges(inst, image, 0.85, 2, 12, 1000)
    mirrored = np.pad(image, ((m, m), (m, m), (0, 0)), mode="symmetric")
    assert set(np.unique(own)) == {0, 5, 6} and (split_at_edges(inst, mirrored, 0.85, 2, 12, 1000) == own).all()
    beyond = np.pad(image, ((m, m), (m, m), (0, 0)), mode="constant", constant_values=255)  # a bright edge past it
    assert (edge_strength(beyond, np.pad(inst > 0, m), 2)[m:-m, m:-m] != edge_strength(image, inst > 0, 2)).any()
    for rows, cols in (((m, m), (m, m + 1)), ((m, m + 1), (m, m + 1))):  # not one margin all round
        with pytest.raises(ConfigError, match="grown by one margin"):
            split_at_edges(inst, np.pad(image, (rows, cols, (0, 0))), 0.85, 2, 12, 1000)


def test_scene_fields_and_the_card_split_two_fields_the_map_joined():
    from magseg_ray.fields.polygons import scene_fields
    from magseg_ray.fields.rules import resolve_rules
    from magseg_ray.masks.schemas import get_schema
    from magseg_ray.model.card import ModelPrompt

    inst, image = _two_tones()
    classes = np.where(inst > 0, 1, 0).astype(np.uint8)  # fields3: one field, no boundary drawn
    args = (np.ones(classes.shape, np.float32), from_origin(500_000, 4_000_000, 1.0, 1.0), "EPSG:32615",
            get_schema("fields3"))
    assert len(scene_fields(classes, *args)) == 1
    rules = resolve_rules(ModelPrompt(field_edge_quantile=0.85))
    assert rules == FieldRules(edge_quantile=0.85, edge_sigma_m=2.0, edge_depth_m=12.0, edge_core_m2=1000.0)
    assert resolve_rules(ModelPrompt(field_edge_quantile=0.85), edge_quantile=0).edge_quantile == 0
    fields = scene_fields(classes, *args, rules=rules, image=image)
    assert len(fields) == 2 and sorted(fields["pixels"]) == pytest.approx([12_000, 12_000], abs=400)


def test_two_real_neighbouring_fields_joined_come_apart_along_the_imagery():
    """NAIP scene of tests/data: truth fields 16 and 17 (3.8 and 7.3 ha, sharing a 144 px edge) given
    one id, as a map that never drew their shared edge; the card's settings at 1 m part them again."""
    import rasterio
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data" / "naip"
    with rasterio.open(data / "naip_43p4066_m83p6220.labels.tif") as src:
        truth = src.read(1).astype(np.int32)
    with rasterio.open(data / "naip_43p4066_m83p6220.tif") as src:
        image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    joined = np.where(truth == 17, 16, truth)
    out = split_at_edges(joined, image, quantile=0.85, sigma_px=2, depth_px=12, core_px=1000)
    for field in (16, 17):
        ious = [((out == i) & (truth == field)).sum() / ((out == i) | (truth == field)).sum()
                for i in np.unique(out[joined == 16])]
        assert max(ious) > 0.95
