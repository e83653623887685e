import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magseg_ray.errors import SchemaError
from magseg_ray.errors import ConfigError
from magseg_ray.masks.instances import instances_from_classes, resolve_seed_px
from magseg_ray.masks.schemas import classes_from_instances


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``a`` and ``b`` have the same zeros and their ids correspond one to one."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return pairs.shape[1] == np.unique(a[a > 0]).size == np.unique(b[b > 0]).size


def _cuts(draw, total: int, min_size: int) -> list[int]:
    """Sorted cut positions splitting 0..total into pieces of at least ``min_size``."""
    cuts = [0]
    while total - cuts[-1] >= 2 * min_size and draw(st.booleans()):
        cuts.append(draw(st.integers(cuts[-1] + min_size, total - min_size)))
    return cuts + [total]


@st.composite
def rectangle_fields(draw) -> np.ndarray:
    """Touching rectangular fields (at least 3 px a side): rows of strips, some left as background."""
    h, w = draw(st.integers(3, 30)), draw(st.integers(3, 30))
    inst = np.zeros((h, w), np.int32)
    rows = _cuts(draw, h, 3)
    for r0, r1 in zip(rows, rows[1:]):
        cols = _cuts(draw, w, 3)
        for c0, c1 in zip(cols, cols[1:]):
            if draw(st.booleans()):
                inst[r0:r1, c0:c1] = inst.max() + 1
    return inst


def test_touching_fields_round_trip():
    inst = np.zeros((12, 14), np.int32)
    inst[:6, :5], inst[:6, 5:14], inst[6:, :9], inst[6:10, 9:12] = 1, 2, 3, 4
    recovered = instances_from_classes(classes_from_instances(inst, "fields3"), "fields3")
    assert recovered.dtype == np.int32
    assert same_partition(recovered, inst)


@settings(max_examples=60, deadline=None)
@given(rectangle_fields())
def test_round_trip_recovers_partition(inst):
    assert same_partition(instances_from_classes(classes_from_instances(inst, "fields3"), "fields3"), inst)


def test_interior_components_are_4_connected():
    mask = np.array([[1, 0], [0, 1]], np.uint8)
    assert set(np.unique(instances_from_classes(mask, "fields3"))) == {0, 1, 2}


def test_boundary_far_from_interior_forms_own_components():
    mask = np.zeros((16, 16), np.uint8)
    mask[:3, :3] = 1
    mask[:3, 3] = 2  # next to the interior: joins it
    mask[15, 2:7] = 2  # a lone boundary line, 13 px from the interior: a field of its own
    out = instances_from_classes(mask, "fields3")
    assert out[0, 3] == out[0, 0] == 1
    assert set(np.unique(out[15, 2:7])) == {2}
    assert out.max() == 2


@pytest.mark.parametrize("width", [1, 4, 6])
def test_wide_boundaries_across_a_gap_round_trip(width):
    """Aerial field polygons are often parted by a gap of a few pixels: at boundary width w both
    sides of a 3 px gap are marked w - 3 px deep, touching fields w px deep, and every marked
    pixel goes back to its own field."""
    inst = np.zeros((40, 44), np.int32)
    inst[:20, :20], inst[:20, 23:44], inst[20:, :44] = 1, 2, 3  # a 3 px gap, then touching fields below
    classes = classes_from_instances(inst, "fields3", width)
    deep = max(width - 3, 0)
    assert (classes[:12, 20 - deep : 20] == 2).all() and (classes[:12, :20 - deep] == 1).all()
    assert (classes[26:, :] == 1).all() and (classes[20 : 20 + width, :18] == 2).all()
    assert same_partition(instances_from_classes(classes, "fields3"), inst)


def test_schema_without_boundary_class():
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 1]], np.uint8)
    np.testing.assert_array_equal(instances_from_classes(mask, "ai4sf"), [[1, 1, 0, 2], [0, 0, 0, 2]])
    alu = np.array([[1, 2, 1]], np.uint8)  # only the field class makes fields
    np.testing.assert_array_equal(instances_from_classes(alu, "alu"), [[1, 0, 2]])


def test_values_outside_schema_raise():
    with pytest.raises(SchemaError):
        instances_from_classes(np.array([[3]], np.uint8), "fields3")


def _two_fields_with_a_gap(gap: int) -> np.ndarray:
    """Two 64 x 64 fields side by side, parted by a 4 px boundary line that misses ``gap`` rows
    in the middle (a patch where a model did not draw the edge)."""
    mask = np.ones((64, 132), np.uint8)
    mask[:, 64:68] = 2
    mask[32 - gap // 2 : 32 + gap - gap // 2, 64:68] = 1
    return mask


@pytest.mark.parametrize("gap", [8, 32])
def test_cores_keep_fields_apart_across_a_gap_in_their_boundary(gap):
    mask = _two_fields_with_a_gap(gap)
    assert instances_from_classes(mask, "fields3").max() == 1  # one interior component: one field
    out = instances_from_classes(mask, "fields3", seed_px=16)
    assert out.max() == 2
    left, right = out[:, :60], out[:, 72:]
    assert np.unique(left).size == 1 and np.unique(right).size == 1 and left[0, 0] != right[0, 0]
    assert (out > 0).all()  # every field pixel, boundary and gap included, belongs to a field
    split = out[32]  # the gap row is cut where the boundary line runs
    assert 60 <= np.flatnonzero(split != split[0])[0] <= 72


def test_a_gap_wider_than_twice_the_core_depth_joins_the_fields():
    mask = _two_fields_with_a_gap(48)
    assert instances_from_classes(mask, "fields3", seed_px=16).max() == 1
    assert instances_from_classes(mask, "fields3", seed_px=25).max() == 2


def test_a_field_too_narrow_for_a_core_stays_one_field():
    mask = np.zeros((40, 80), np.uint8)
    mask[:, :40] = 1  # a field wide enough for a core
    mask[:, 40:42] = 2
    mask[:, 42:52] = 1  # a 10 px strip: no pixel is 16 px deep
    out = instances_from_classes(mask, "fields3", seed_px=16)
    assert out.max() == 2
    assert np.unique(out[:, 43:52]).size == 1 and out[0, 43] != out[0, 0]
    assert same_partition(out, instances_from_classes(mask, "fields3"))


def test_cores_never_take_a_pixel_across_a_closed_boundary():
    """On perfect masks of the synthetic smallholder scenes every field grown from cores lies inside
    one true field: a core's reach stops at its own interior component (it once took the pixels of
    a neighbouring field that lay nearer to it than to that field's own core)."""
    from magseg_ray.scenes.synthetic import SyntheticConfig, make_scene

    for seed in range(2):
        truth = make_scene(SyntheticConfig(seed=seed, size_px=512)).instances
        classes = classes_from_instances(truth, "fields3")
        out = instances_from_classes(classes, "fields3", seed_px=16)
        inside = (out > 0) & (classes == 1)
        pairs = np.unique(np.stack([out[inside], truth[inside]]), axis=1)
        assert pairs.shape[1] == np.unique(out[inside]).size  # one true field per grown field
        assert (out[classes == 1] > 0).all()


def test_a_seed_px_setting_is_a_depth_or_minus_one_for_the_default():
    assert resolve_seed_px(-1, 16) == 16.0 and resolve_seed_px(0, 16) == 0.0 and resolve_seed_px(8.5, 16) == 8.5
    for bad in (-2, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="must be >= 0, or -1"):
            resolve_seed_px(bad, 16)


def _scipy_instances(mask: np.ndarray, seed_px: float, reach: float = 9) -> np.ndarray:
    """The rule of ``instances_from_classes`` as SciPy's transforms run it over the whole raster (the
    implementation before the fast paths): the oracle the fast paths must match pixel for pixel."""
    from scipy import ndimage

    boundary, interior = mask == 2, mask == 1
    labels, n = ndimage.label(interior)
    if seed_px > 0 and n:
        cores, c = ndimage.label(ndimage.distance_transform_edt(interior) > seed_px)
        out = np.zeros_like(labels)
        for k in range(1, n + 1):
            own = labels == k
            mine = np.where(own, cores, 0)
            if not mine.any():
                continue
            rows, cols = ndimage.distance_transform_edt(mine == 0, return_distances=False, return_indices=True)
            out[own] = mine[rows[own], cols[own]]
        coreless = interior & (out == 0)
        extra, _ = ndimage.label(coreless)
        out[coreless] = extra[coreless] + c
        labels, n = out, int(out.max())
    if n:
        distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        near = boundary & (distance <= reach)
        labels[near] = labels[rows[near], cols[near]]
    rest = boundary & (labels == 0)
    lone, _ = ndimage.label(rest)
    labels[rest] = lone[rest] + n
    return labels


@pytest.mark.parametrize("seed_px,reach", [(0.0, 0.0), (0.0, 1.5), (0.0, 9.0), (1.0, 9.0), (2.5, 9.0), (4.0, 9.0), (4.0, 1.5)])
def test_the_fast_paths_give_scipys_fields_pixel_for_pixel(seed_px, reach):
    """Blocky random masks (many equidistant pixels, so the tie rule is exercised), some with
    boundary far from any field: the same instance ids as the SciPy oracle, not just the same
    partition."""
    rng = np.random.default_rng(int(seed_px * 10 + reach))
    for _ in range(25):
        h, w = rng.integers(12, 48, 2)
        coarse = rng.choice(3, size=(h // 3 + 1, w // 3 + 1), p=[0.2, 0.5, 0.3]).astype(np.uint8)
        mask = np.kron(coarse, np.ones((3, 3), np.uint8))[:h, :w]
        mask[rng.random((h, w)) < 0.1] = 2  # speckled boundary: gaps, lone boundary pixels
        assert np.array_equal(instances_from_classes(mask, reach=reach, seed_px=seed_px),
                              _scipy_instances(mask, seed_px, reach))


def test_a_mask_that_is_all_interior_is_one_field_with_or_without_cores():
    mask = np.ones((40, 50), np.uint8)
    assert np.array_equal(instances_from_classes(mask, seed_px=16), np.ones((40, 50), np.int32))
