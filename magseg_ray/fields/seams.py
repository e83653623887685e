"""Fields across scene seams: each place is mapped by one scene, and fields cut by a seam are rejoined.

Chip seams need nothing here: chips are stitched into one raster per scene before polygonizing
(:mod:`magseg_ray.stitch.mosaic`), so a field spanning chips is one connected component.

Scene seams: scenes overlap, sit in different UTM zones, and are polygonized separately. Each
scene *owns* its footprint within the AOI minus the footprints of the scenes before it (newest, then
least cloud, then id: :func:`magseg_ray.scenes.overlap.owned_areas`, the rule chips are planned by),
so every place is mapped once. A scene's fields are clipped to what it owns;
those within ``tolerance`` of a seam (an owned-area edge shared with another scene) are *seam
pieces*, the rest are final. Pieces from different scenes whose ``tolerance`` buffers overlap by at
least ``2 * tolerance`` squared of area (they touch along the seam, not at a corner) are one
field cut by the seam, and are unioned (:func:`merge_pieces`). Only seam pieces travel to the
final merge, so it stays small at country scale.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

METRES_PER_DEGREE = 111_320.0
"""Length of a degree of latitude, to turn pixel tolerances into degrees (EPSG:4326)."""


def seams(owned: dict[str, shapely.Geometry], tolerance: dict[str, float]) -> dict[str, shapely.Geometry]:
    """Scene id -> the edges of its owned area that other scenes' owned areas touch (within that
    scene's ``tolerance``); neighbours are found with an R-tree."""
    ids = [k for k, a in owned.items() if not a.is_empty]
    tree = shapely.STRtree([owned[k] for k in ids])
    out = {k: shapely.LineString() for k in owned}
    for k in ids:
        near = tree.query(owned[k], predicate="dwithin", distance=tolerance[k])
        others = [owned[ids[j]] for j in near if ids[j] != k]
        if others:
            out[k] = shapely.intersection(owned[k].boundary, shapely.union_all(others).buffer(tolerance[k]))
    return out


def _polygonal(geom):
    parts = [g for g in shapely.get_parts(shapely.make_valid(geom)) if isinstance(g, shapely.Polygon) and not g.is_empty]
    return shapely.MultiPolygon(parts) if len(parts) > 1 else (parts[0] if parts else None)


def split_at_seams(fields: gpd.GeoDataFrame, owned: shapely.Geometry, seam: shapely.Geometry,
                   tolerance: float) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """``(final, pieces)``: ``fields`` (EPSG:4326) clipped to the owned area, split by whether they
    lie within ``tolerance`` of the seam."""
    clipped = [_polygonal(shapely.intersection(g, owned)) for g in fields.geometry]
    fields = fields.assign(geometry=clipped)
    fields = fields[fields.geometry.notna()].copy()
    if seam.is_empty or fields.empty:
        return fields, fields.iloc[:0]
    near = shapely.dwithin(fields.geometry.values, seam, tolerance)
    return fields[~near], fields[near]


def merge_pieces(pieces: gpd.GeoDataFrame, tolerance: float) -> gpd.GeoDataFrame:
    """Union the seam pieces that are one field (see module doc). ``pieces`` has ``scene_id``,
    ``confidence`` and ``geometry``; merged rows get the area-weighted confidence, the pieces' scene
    ids joined by ``+`` and the first piece's other attributes."""
    if pieces.empty:
        return pieces
    pieces = pieces.sort_values(["scene_id", "instance"]).reset_index(drop=True)
    grown = gpd.GeoSeries(shapely.buffer(pieces.geometry.values, tolerance))
    left, right = grown.sindex.query(grown.values, predicate="intersects")
    other_scene = pieces["scene_id"].to_numpy()[left] != pieces["scene_id"].to_numpy()[right]
    left, right = left[other_scene], right[other_scene]
    overlap = shapely.area(shapely.intersection(grown.values[left], grown.values[right]))
    joined = overlap >= 2 * (2 * tolerance) ** 2
    n = len(pieces)
    graph = coo_matrix((np.ones(joined.sum()), (left[joined], right[joined])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    rows = []
    for g in np.unique(group):
        members = pieces[group == g]
        first = members.iloc[0].to_dict()
        if len(members) > 1:
            areas = shapely.area(members.geometry.values)
            first["geometry"] = _polygonal(shapely.buffer(shapely.union_all(shapely.buffer(members.geometry.values, tolerance / 2)), -tolerance / 2))
            first["confidence"] = float(np.average(members["confidence"], weights=areas))
            first["pixels"] = int(members["pixels"].sum())
            first["scene_id"] = "+".join(sorted(set(members["scene_id"])))
        rows.append(first)
    merged = gpd.GeoDataFrame(pd.DataFrame(rows), geometry="geometry", crs=pieces.crs)
    return merged[merged.geometry.notna()]


def tolerance_degrees(gsd_m: float, pixels: float = 1.5) -> float:
    """``pixels`` pixels of ``gsd_m`` metres, in degrees of latitude."""
    return pixels * gsd_m / METRES_PER_DEGREE
