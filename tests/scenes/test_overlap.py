"""The overlap rule: newest scene first, then least cloud, then id; each place owned once."""

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from magseg_ray.scenes.overlap import owned_areas, scene_order


def frame(rows):
    df = pd.DataFrame(rows, columns=["id", "datetime", "cloud_cover", "geometry"])
    df["datetime"] = pd.to_datetime(df["datetime"], utc=True)
    return gpd.GeoDataFrame(df, geometry="geometry", crs="EPSG:4326")


def test_newest_then_least_cloud_then_id_and_unknowns_last():
    box = shapely.box(0, 0, 1, 1)
    scenes = frame([
        ("old", "2019-05-01", 0.0, box),
        ("undated", None, 0.0, box),
        ("new_cloudy", "2021-05-01", 40.0, box),
        ("new_clear_b", "2021-05-01", 5.0, box),
        ("new_clear_a", "2021-05-01", 5.0, box),
        ("new_unknown_cloud", "2021-05-01", np.nan, box),
    ])
    assert scene_order(scenes) == ["new_clear_a", "new_clear_b", "new_cloudy", "new_unknown_cloud", "old", "undated"]
    # a frame without datetime or cloud columns (older catalogs) falls back to the id
    assert scene_order(scenes[["id", "geometry"]].iloc[::-1]) == sorted(scenes["id"])


def test_the_newer_scene_owns_the_overlap_and_an_identical_copy_owns_nothing():
    scenes = frame([
        ("a", "2020-01-01", 0.0, shapely.box(0, 0, 2, 2)),
        ("b", "2022-01-01", 50.0, shapely.box(1, 0, 3, 2)),  # newer: owns the overlap despite its cloud
        ("b_copy", "2022-01-01", 60.0, shapely.box(1, 0, 3, 2)),
    ])
    owned = owned_areas(scenes, shapely.box(-1, -1, 4, 4))
    assert owned["b"].equals(shapely.box(1, 0, 3, 2))
    assert owned["a"].equals(shapely.box(0, 0, 1, 2))
    assert owned["b_copy"].area == 0
