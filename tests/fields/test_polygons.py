"""The fields step's polygons are the same as the plain per-instance computation gives (the
reference below is the reducer as it was before it was vectorised: SciPy label statistics,
``np.isin``, one ``simplify`` call per field; ``tests/masks/test_instances.py`` holds the instances'
own SciPy oracle)."""

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from magseg_ray.fields.polygons import scene_fields
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
    assert list(shapely.to_wkb(got.geometry.values)) == list(shapely.to_wkb(want.geometry.values))
