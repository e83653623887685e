"""The fields step's fields are the ones the plain per-instance computation gives (the reference
below is the reducer as it was before it was vectorised: SciPy label statistics, ``np.isin``, one
topology-preserving ``simplify`` call per field; ``tests/masks/test_instances.py`` holds the
instances' own SciPy oracle), their polygons simplified by :func:`simplify_fields`' rule."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from magseg_ray.fields.polygons import scene_fields, simplify_fields
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import classes_from_instances, get_schema
from magseg_ray.scenes.synthetic import SyntheticConfig, make_scene
from magseg_ray.masks.schemas import NO_DATA


def reference_fields(classes, confidence, transform, crs, schema, simplify_px=1.0, min_field_px=16, seed_px=0.0):
    valid = classes != NO_DATA
    inst = instances_from_classes(np.where(valid, classes, 0), schema, seed_px=seed_px)
    inst[~valid] = 0
    ids = np.arange(1, int(inst.max()) + 1)
    pixels = ndimage.sum_labels(np.ones_like(inst), inst, ids)
    conf = ndimage.mean(np.nan_to_num(confidence, nan=0.0), inst, ids)
    inst[~np.isin(inst, ids[pixels >= min_field_px])] = 0
    shapes = {}
    for geom, value in rasterio.features.shapes(inst, mask=inst > 0, transform=transform, connectivity=4):
        shapes.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    rows = []
    for i in sorted(shapes):
        geom = shapely.union_all(shapes[i]) if len(shapes[i]) > 1 else shapes[i][0]
        rows.append((i, int(pixels[i - 1]), float(conf[i - 1]), geom.simplify(simplify_px * abs(transform.a), True)))
    frame = gpd.GeoDataFrame(rows, columns=["instance", "pixels", "confidence", "geometry"], geometry="geometry", crs=crs)
    return frame.to_crs("EPSG:4326")


@pytest.fixture(scope="module")
def mosaic():
    """A benchmark-like class mask (``benchmarks/mapping.py`` tiles the same synthetic scenes),
    with unmapped pixels and uneven confidence."""
    schema = get_schema("fields3")
    tiles = [classes_from_instances(make_scene(SyntheticConfig(seed=s, size_px=512)).instances, schema) for s in range(4)]
    classes = np.block([[tiles[(i + j) % 4] for j in range(3)] for i in range(3)])
    classes[:40, 700:900] = NO_DATA
    confidence = np.random.default_rng(0).uniform(0.2, 1, classes.shape).astype(np.float32)
    confidence[classes == NO_DATA] = np.nan
    return classes, confidence


@pytest.mark.parametrize("seed_px", [0.0, 16.0])
def test_fields_are_the_reference_fields(mosaic, seed_px):
    classes, confidence = mosaic
    schema = get_schema("fields3")
    args = (classes, confidence, from_origin(500_000, 1_400_000, 0.5, 0.5), "EPSG:32648", schema)
    got, want = scene_fields(*args, seed_px=seed_px), reference_fields(*args, seed_px=seed_px)
    assert len(got) > 100 and list(got.columns) == list(want.columns)
    assert got["instance"].tolist() == want["instance"].tolist()
    assert got["pixels"].tolist() == want["pixels"].tolist()
    assert np.array_equal(got["confidence"].to_numpy(), want["confidence"].to_numpy())
    # Douglas-Peucker where it keeps the field what it is: most polygons are the reference's own,
    # the others lie within the tolerance of both (0.5 m each way), as valid, with as many holes
    same = shapely.equals_exact(got.geometry.values, want.geometry.values, 0)
    assert 0.8 < same.mean() < 1
    ours, theirs = got.geometry.values.to_crs("EPSG:32648"), want.geometry.values.to_crs("EPSG:32648")
    assert shapely.hausdorff_distance(ours[~same], theirs[~same]).max() <= 1.0 + 1e-6
    assert shapely.is_valid(ours).all() and (shapely.get_type_id(ours) == shapely.get_type_id(theirs)).all()
    assert (shapely.get_num_interior_rings(ours) == shapely.get_num_interior_rings(theirs)).all()


# fields (pixel outlines) whose rings plain Douglas-Peucker would spoil, found by a search over
# random pixel masks; each keeps its polygon through the topology-preserving simplifier. Beside
# each, what GEOS's plain Douglas-Peucker makes of the whole polygon: an empty field, a lost hole,
# two pieces, and a valid polygon that lost a lobe (area 8 -> 5.5) when GEOS mended a crossing
SLIVER = "POLYGON ((20 0, 20 1, 19 1, 19 2, 20 2, 20 3, 22 3, 22 2, 23 2, 23 1, 22 1, 22 0, 20 0))"
HOLED = "POLYGON ((36 18, 36 20, 37 20, 37 21, 40 21, 40 18, 36 18), (38 19, 39 19, 39 20, 38 20, 38 19))"
PINCHED = ("POLYGON ((0 28, 0 37, 1 37, 1 38, 2 38, 2 37, 4 37, 4 36, 1 36, 1 35, 3 35, 3 34, 2 34, 2 32, "
           "1 32, 1 28, 0 28))")
LOBED = "POLYGON ((3 4, 3 6, 2 6, 2 5, 1 5, 1 6, 0 6, 0 7, 2 7, 2 8, 3 8, 3 7, 4 7, 4 4, 3 4))"
STAIRS = "POLYGON ((0 0, 0 5, 5 5, 5 4, 4 4, 4 3, 3 3, 3 2, 2 2, 2 1, 1 1, 1 0, 0 0))"


@pytest.mark.parametrize("wkt, tolerance, plain", [
    (SLIVER, 2.0, "POLYGON EMPTY"),
    (HOLED, 1.0, "POLYGON ((36 18, 37 21, 40 21, 40 18, 36 18))"),
    (PINCHED, 2.0, "MULTIPOLYGON (((0 28, 1.5 35.5, 3 34, 0 28)), ((1.6 36, 2 38, 4 36, 1.6 36)))"),
    (LOBED, 1.0, "POLYGON ((3 6, 1 5, 0 7, 3 8, 3 6))"),
    ("MULTIPOLYGON (((0 0, 0 4, 4 4, 4 0, 0 0)), ((10 10, 10 14, 14 14, 14 10, 10 10)))", 1.0, None),
])
def test_a_field_that_douglas_peucker_would_change_is_simplified_preserving_its_topology(wkt, tolerance, plain):
    field = np.array([shapely.from_wkt(wkt), shapely.from_wkt(STAIRS)], dtype=object)
    if plain:
        assert shapely.simplify(field[0], tolerance, preserve_topology=False).equals_exact(shapely.from_wkt(plain), 1e-9)
    got = simplify_fields(field, tolerance)
    assert got[0].equals_exact(shapely.simplify(field[0], tolerance, preserve_topology=True), 0)
    assert got[0].is_valid and not got[0].is_empty and got[0].geom_type == field[0].geom_type
    # the staircase beside it takes the plain path: its ring simplified alone, fewer vertices than
    # the topology-preserving simplifier keeps
    ring = shapely.simplify(field[1].exterior, tolerance, preserve_topology=False)
    assert got[1].equals_exact(shapely.Polygon(ring), 0)
    assert shapely.get_num_coordinates(got[1]) < shapely.get_num_coordinates(
        shapely.simplify(field[1], tolerance, preserve_topology=True))


def test_simplified_fields_keep_their_holes_and_validity_on_random_pixel_masks():
    """Every field of 100 random pixel masks, at three tolerances: valid, one polygon, its holes."""
    rng = np.random.default_rng(1)
    fields = []
    for _ in range(100):
        labels, _ = ndimage.label(rng.random((40, 40)) < rng.uniform(0.5, 0.7))
        fields += [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(labels, mask=labels > 0, connectivity=4)]
    fields = np.array(fields, dtype=object)
    assert len(fields) > 3000 and shapely.get_num_interior_rings(fields).sum() > 100
    for tolerance in (1.0, 2.0, 3.0):
        got = simplify_fields(fields, tolerance)
        assert shapely.is_valid(got).all() and not shapely.is_empty(got).any()
        assert (shapely.get_type_id(got) == shapely.GeometryType.POLYGON).all()
        assert (shapely.get_num_interior_rings(got) == shapely.get_num_interior_rings(fields)).all()


BROKEN_BY_GEOS = "POLYGON ((10 51.5, 10 51, 9.5 51, 9.5 50.5, 8.5 50.5, 8.5 50, 8 50, 8 49.5, 7 49.5, 7 48.5, 6.5 48.5, 6.5 48, 6 48, 6 47, 5.5 47, 5.5 46, 5 46, 5 45.5, 4.5 45.5, 4.5 44.5, 4 44.5, 4 44, 3.5 44, 3.5 43, 3 43, 3 42, 2.5 42, 2.5 41.5, 2 41.5, 2 40.5, 1.5 40.5, 1.5 40, 1 40, 1 39, 0.5 39, 0.5 38, 0 38, 0 34, -0.5 34, -0.5 17.5, 0 17.5, 0 13.5, 0.5 13.5, 0.5 11.5, 1 11.5, 1 9.5, 1.5 9.5, 1.5 7, 2 7, 2 5.5, 2.5 5.5, 2.5 5, 3 5, 3 4, 3.5 4, 3.5 3, 5 3, 5 2.5, 8 2.5, 8 2, 12 2, 12 1.5, 13.5 1.5, 13.5 1, 14 1, 14 0.5, 27.5 0.5, 27.5 2, 31 2, 31 7, 31.5 7, 31.5 12, 32 12, 32 16.5, 32.5 16.5, 32.5 21, 33 21, 33 22.5, 32.5 22.5, 32.5 23.5, 32 23.5, 32 24, 31.5 24, 31.5 25, 31 25, 31 26, 30.5 26, 30.5 26.5, 30 26.5, 30 27.5, 29.5 27.5, 29.5 28.5, 29 28.5, 29 29, 28.5 29, 28.5 30, 28 30, 28 31, 26 31, 26 32, 25 32, 25 39.5, 24 39.5, 24 39, 22.5 39, 22.5 40, 22 40, 22 40.5, 21.5 40.5, 21.5 41.5, 21 41.5, 21 42.5, 20.5 42.5, 20.5 43, 20 43, 20 44, 19.5 44, 19.5 44.5, 19 44.5, 19 45.5, 18.5 45.5, 18.5 46, 18 46, 18 46.5, 17.5 46.5, 17.5 47, 17 47, 17 47.5, 16.5 47.5, 16.5 48, 15 48, 15 49.5, 14.5 49.5, 14.5 50, 11.5 50, 11.5 51, 11 51, 11 51.5, 10 51.5), (14.5 48, 15 48, 15 47.5, 14.5 47.5, 14.5 48))"
"""A field of README command 1's synthetic scene (after the card's field rules, shifted to the origin)
whose hole touches its shell: GEOS's topology-preserving simplifier at 6 m puts the hole outside."""


def test_a_field_the_simplifier_would_break_stays_as_it_was():
    field = shapely.from_wkt(BROKEN_BY_GEOS)
    assert field.is_valid and not shapely.simplify(field, 6.0, preserve_topology=True).is_valid
    out = simplify_fields(np.array([field], dtype=object), 6.0)[0]
    assert out.is_valid and out.equals(field)
