"""Which scene maps each place, where catalogued scenes overlap: the one rule every job follows.

Rule (:func:`scene_order`): the **newest** scene first (catalog ``datetime``; a scene of unknown time
after every dated one), then the **least cloud** (``cloud_cover``, percent; unknown after every
known), then the smaller **id**. Each scene *owns* its footprint within the area minus the
footprints of every scene before it (:func:`owned_areas`), so every place is mapped by one scene:
chips are planned only where their scene owns the area (:func:`~magseg_ray.chips.windows.chip_windows`),
pixels of a chip outside that area are not answered, and the fields step clips each scene's fields
to it (:mod:`magseg_ray.fields.seams`). Two copies of one scene therefore cost one decode, and the
run's ``mapped_km2`` cannot exceed the AOI's area.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely


def scene_order(scenes: pd.DataFrame) -> list[str]:
    """The ids of the catalog frame ``scenes`` (``id``; ``datetime`` and ``cloud_cover`` where it has
    them) in the order of the rule of the module doc."""
    n = len(scenes)
    when = pd.to_datetime(scenes["datetime"], utc=True) if "datetime" in scenes else pd.Series([pd.NaT] * n)
    cloud = scenes["cloud_cover"].astype(float) if "cloud_cover" in scenes else pd.Series([np.nan] * n)
    newest = np.array([np.inf if pd.isna(t) else -float(t.value) for t in when], float)
    cloudiest = np.where(np.isnan(cloud.to_numpy(float)), np.inf, cloud.to_numpy(float))
    ids = scenes["id"].astype(str).to_numpy()
    return [ids[i] for i in np.lexsort((ids, cloudiest, newest))]


def owned_areas(scenes: gpd.GeoDataFrame, area) -> dict[str, shapely.Geometry]:
    """Scene id -> the part of ``area`` (EPSG:4326) that scene maps, for the catalog frame ``scenes``
    (footprints in EPSG:4326), by :func:`scene_order`. Only overlapping scenes are compared (an
    R-tree), so a country's catalog stays near-linear."""
    order = scene_order(scenes)
    footprint = dict(zip(scenes["id"].astype(str), scenes.geometry.values))
    areas = [shapely.intersection(footprint[i], area) for i in order]
    tree = shapely.STRtree(areas)
    owned = {}
    for k, (scene_id, part) in enumerate(zip(order, areas)):
        earlier = [areas[j] for j in tree.query(part, predicate="intersects") if j < k]
        owned[scene_id] = shapely.difference(part, shapely.union_all(earlier)) if earlier else part
    return owned
