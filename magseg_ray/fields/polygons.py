"""A scene's class raster -> field polygons with fiboa attributes.

Fields are the instances of :func:`~magseg_ray.masks.instances.instances_from_classes` (the
boundary class keeps touching fields apart, boundary pixels are given back to the field they belong
to, and with ``seed_px`` fields grow from cores, so a boundary with gaps still separates them). Each
instance is polygonized on the scene grid, simplified with a tolerance of ``simplify_px`` pixels (so
the tolerance follows the GSD; :func:`simplify_fields` says how), and measured in metres in the UTM
zone of its centroid, which works the same for scenes in any CRS and for polygons merged across zones.
Before polygons are made, the :class:`~magseg_ray.fields.rules.FieldRules` in ground units apply
(minimum size with small pieces merged into a neighbour, holes closed, maximum size), and their
``simplify_m``, when set, replaces ``simplify_px``.
"""

from __future__ import annotations

import itertools

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
from rasterio.transform import Affine

from magseg_ray.fields.rules import FieldRules, apply_rules, pixel_metres
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import Schema
from magseg_ray.masks.schemas import NO_DATA

FIBOA_METHOD = "auto-imagery"
"""fiboa ``determination:method`` of every field this system maps."""


def scene_fields(classes: np.ndarray, confidence: np.ndarray, transform: Affine, crs: str, schema: Schema,
                 simplify_px: float = 1.0, min_field_px: int = 16, seed_px: float = 0.0,
                 rules: FieldRules = FieldRules(), image: np.ndarray | None = None) -> gpd.GeoDataFrame:
    """Field polygons of one scene, in EPSG:4326, with ``confidence`` (mean over the field's
    pixels) and ``pixels``; ``rules`` applied (their edge split reads ``image``, the scene's
    ``H x W x bands`` pixels), then fields smaller than ``min_field_px`` pixels dropped."""
    valid = classes != NO_DATA
    gaps = not valid.all()
    inst = instances_from_classes(np.where(valid, classes, 0) if gaps else classes, schema, seed_px=seed_px)
    if gaps:
        inst[~valid] = 0
    metres = pixel_metres(transform, crs, classes.shape)
    inst = apply_rules(inst, rules, metres, valid if gaps else None, image)
    n = int(inst.max())
    columns = {"instance": [], "pixels": [], "confidence": [], "geometry": []}
    if n:
        # ndimage.sum_labels / mean, in one pass each; bincount's own types (its conversions of
        # int32 labels and float32 weights are slow), cast once: the same sums, 2x faster at 8192²
        flat = inst.ravel().astype(np.intp)
        pixels = np.bincount(flat, minlength=n + 1)[1:]
        weights = np.nan_to_num(confidence, nan=0.0) if np.isnan(confidence).any() else confidence
        with np.errstate(invalid="ignore"):  # an instance with no valid pixel left: NaN, dropped below
            conf = np.bincount(flat, weights=weights.ravel().astype(np.float64), minlength=n + 1)[1:] / pixels
        keep = np.concatenate([[False], pixels >= min_field_px])
        values, polygons = _polygons(rasterio.features.shapes(inst, mask=keep[inst], transform=transform, connectivity=4))
        shapes: dict[int, list] = {}
        for value, polygon in zip(values, polygons):
            shapes.setdefault(value, []).append(polygon)
        tolerance = rules.simplify_m / metres * abs(transform.a) if rules.simplify_m else simplify_px * abs(transform.a)
        order = sorted(shapes)
        geoms = [shapely.union_all(shapes[i]) if len(shapes[i]) > 1 else shapes[i][0] for i in order]
        columns["instance"] = order
        columns["pixels"] = [int(pixels[i - 1]) for i in order]
        columns["confidence"] = [float(conf[i - 1]) for i in order]
        columns["geometry"] = list(simplify_fields(np.array(geoms, dtype=object), tolerance))
    frame = gpd.GeoDataFrame(columns, geometry="geometry", crs=crs)
    return frame.to_crs("EPSG:4326")


def simplify_fields(geoms: np.ndarray, tolerance: float) -> np.ndarray:
    """Each field simplified within ``tolerance``: its rings by Douglas-Peucker, each on its own and
    never mended, where the rings put back together make a valid polygon (no ring collapsed or
    crossed itself, every hole is still inside the shell and clear of the others); any other field,
    and one in several parts, by GEOS's topology-preserving simplifier. So every field keeps that
    simplifier's guarantees (valid, its parts, its holes); where that simplifier breaks them (a hole
    it moves outside the shell, seen on a field whose hole touches its shell), the field stays as it
    was. GEOS's own Douglas-Peucker on a polygon would not: it mends a crossing ring, which can split
    the field or drop a lobe. On pixel outlines most fields take the plain path, several times
    faster. Either way it works field by field: neighbours may differ along a shared edge."""
    out = np.array(geoms, dtype=object)
    plain = np.flatnonzero(shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON)
    rings, owner = shapely.get_rings(geoms[plain], return_index=True)
    rings = shapely.simplify(rings, tolerance, preserve_topology=False)  # a ring alone is never mended
    collapsed = shapely.get_type_id(rings) != shapely.GeometryType.LINEARRING
    whole = np.bincount(owner, weights=collapsed, minlength=len(plain)) == 0
    keep = whole[owner]
    fields, index = np.unique(owner[keep], return_inverse=True)
    rebuilt = shapely.polygons(rings[keep], indices=index)
    valid = shapely.is_valid(rebuilt)
    out[plain[fields[valid]]] = rebuilt[valid]
    done = np.zeros(len(geoms), bool)
    done[plain[fields[valid]]] = True
    out[~done] = shapely.simplify(geoms[~done], tolerance, preserve_topology=True)
    broken = ~done & ~shapely.is_valid(out)  # GEOS's simplifier can leave a hole outside its shell
    out[broken] = geoms[broken]
    return out


def _polygons(shapes) -> tuple[list[int], np.ndarray]:
    """The values and shapely polygons of rasterio's ``(GeoJSON polygon, value)`` pairs, built in one
    vectorised call (the same polygons as ``shapely.geometry.shape`` gives one at a time)."""
    values, rings, ring_counts = [], [], []
    for geom, value in shapes:
        values.append(int(value))
        rings.extend(geom["coordinates"])
        ring_counts.append(len(geom["coordinates"]))
    if not values:
        return values, np.array([], dtype=object)
    lengths = [len(ring) for ring in rings]
    points = itertools.chain.from_iterable(itertools.chain.from_iterable(rings))  # x, y, x, y, ...
    coords = np.fromiter(points, np.float64, count=2 * sum(lengths)).reshape(-1, 2)
    rings = shapely.linearrings(coords, indices=np.repeat(np.arange(len(lengths)), lengths))
    return values, shapely.polygons(rings, indices=np.repeat(np.arange(len(values)), ring_counts))


def utm_zone_crs(lon: float, lat: float) -> str:
    """EPSG code of the WGS84 UTM zone holding a point."""
    zone = int(np.clip(np.floor((lon + 180) / 6) + 1, 1, 60))
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def measure(fields: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Add fiboa ``metrics:area`` (m²) and ``metrics:perimeter`` (m), each field measured in the UTM
    zone of its centroid."""
    fields = fields.copy()
    area = pd.Series(np.nan, index=fields.index)
    perimeter = pd.Series(np.nan, index=fields.index)
    if len(fields):
        centroids = shapely.centroid(fields.geometry.values)
        zones = [utm_zone_crs(x, y) for x, y in zip(shapely.get_x(centroids), shapely.get_y(centroids))]
        for zone in sorted(set(zones)):
            rows = np.array(zones) == zone
            projected = fields.geometry[rows].to_crs(zone)
            area[rows] = projected.area.to_numpy()
            perimeter[rows] = projected.length.to_numpy()
    fields["metrics:area"] = area.astype(float)
    fields["metrics:perimeter"] = perimeter.astype(float)
    return fields
