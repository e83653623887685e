"""Field labels as users hold them, read on a scene's pixel grid: one home for every job that trains
or scores on labelled scenes (SFT, GRPO, dense vision pretraining, ``train_demo.py pack``).

A scene's labels (:func:`attach_labels` puts their URI in a ``labels`` column) are, first match:

1. ``--labels FILE``: one polygon layer for any number of scenes, in any CRS (fiboa GeoParquet, a
   GeoPackage, a shapefile, anything :func:`geopandas.read_file` reads); each scene it overlaps
   takes it, the others have no labels;
2. the scene's ``<id>.labels.tif``: a field instance raster on its grid (0 = not a field);
3. the scene's ``<id>.fields.gpkg``: polygons, as a ``--labels`` file of its own.

:func:`read_instances` gives any window's instance raster: a raster's pixels, or the layer
reprojected to the scene's CRS and rasterised on the window's grid (a pixel belongs to a polygon
when its centre lies inside, GDAL's rule; polygon ``k`` of the layer, in file order, is instance
``k + 1``; a later polygon covers an earlier one). Rasterised so, a scene's ``.fields.gpkg`` gives its
``.labels.tif`` exactly. Boundary classes are derived from instances downstream, as for rasters
(:func:`~magseg_ray.masks.schemas.classes_from_instances`).

Bad input is a :class:`~magseg_ray.errors.ConfigError` naming the file: unreadable, no CRS, a
layer that is not polygons, or one that covers none of the scenes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from magseg_ray.errors import ConfigError

RASTER_SUFFIXES = (".tif", ".tiff")
"""Label URIs read as instance rasters; anything else is a polygon layer."""


def labelled_scenes(scenes, labels: str = "", where: str = "the scenes"):
    """The labelled ones of ``scenes`` (a catalog frame), with their ``labels`` column
    (:func:`attach_labels`); :class:`ConfigError` naming ``where`` when none is."""
    scenes = attach_labels(scenes, labels)
    if scenes["labels"].isna().all():
        raise ConfigError(f"{where} hold no labelled scene: give --labels FILE (polygons) or put <id>.labels.tif "
                          f"or <id>.fields.gpkg beside <id>.tif ({len(scenes)} scenes catalogued)")
    return scenes[scenes["labels"].notna()]


def read_labelled_scene(scene, read=None, store=None) -> tuple[np.ndarray, np.ndarray]:
    """A labelled catalog row read whole: RGB uint8 (as chips are read, ``read`` a
    :class:`~magseg_ray.chips.read.ReadConfig`) and its instance raster."""
    from magseg_ray.chips.read import ReadConfig, read_window
    from magseg_ray.chips.windows import scene_transform

    h, w = int(scene.height), int(scene.width)
    image, _ = read_window(scene.uri, 0, 0, h, w, read or ReadConfig(), store, f"scene {scene.id}")
    return image, read_instances(scene.labels, scene.crs, scene_transform(scene), 0, 0, h, w, store)


def attach_labels(scenes, labels: str = ""):
    """``scenes`` (a catalog frame) with a ``labels`` column: ``labels`` for the scenes that file
    covers (see module doc; :class:`ConfigError` if it covers none), else each scene's sidecar."""
    scenes = scenes.copy()
    if not labels:
        sidecars = scenes["labels_uri"].where(scenes["labels_uri"].notna(), scenes["fields_uri"])
        scenes["labels"] = sidecars.where(sidecars.notna(), None)
        return scenes
    layer = _layer(labels, "EPSG:4326")
    covered = [bool(len(layer.sindex.query(footprint, predicate="intersects"))) for footprint in scenes.geometry]
    if not any(covered):
        w, s, e, n = layer.total_bounds
        raise ConfigError(f"labels {labels!r}: its {len(layer)} polygons (lon {w:.4f} to {e:.4f}, lat {s:.4f} to "
                          f"{n:.4f}) cover none of the {len(scenes)} scenes")
    scenes["labels"] = [labels if c else None for c in covered]
    return scenes


@lru_cache(maxsize=16)
def _layer(uri: str, crs: str):
    """The polygon layer ``uri`` in ``crs`` (cached per process: one file serves many chips)."""
    import geopandas as gpd

    path = Path(uri)
    try:
        parquet = path.suffix == ".parquet" or path.is_dir()
        frame = gpd.read_parquet(uri) if parquet else gpd.read_file(uri)
    except Exception as e:  # pyogrio, pyarrow and fiona raise their own kinds for an unreadable file
        raise ConfigError(f"labels {uri!r}: cannot be read as a polygon layer: {e}") from None
    if frame.crs is None:
        raise ConfigError(f"labels {uri!r}: has no CRS; set it (e.g. ogr2ogr -a_srs) so it can meet the scenes")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    kinds = sorted(set(frame.geom_type) - {"Polygon", "MultiPolygon"})
    if kinds or frame.empty:
        what = f"holds {', '.join(kinds)} geometries" if kinds else "holds no polygon"
        raise ConfigError(f"labels {uri!r}: {what}; field labels must be polygons")
    return gpd.GeoDataFrame(geometry=frame.geometry.to_crs(crs).values, crs=crs, index=frame.index)


def read_instances(labels: str, crs, transform, row: int, col: int, height: int, width: int,
                   store=None) -> np.ndarray:
    """The ``height x width`` instance raster at (row, col) of a scene whose grid is ``crs`` and
    ``transform`` (the scene's Affine, of its pixel (0, 0)), from its labels URI (see module doc); 0 outside every field and past
    a raster's edge."""
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    if labels.lower().endswith(RASTER_SUFFIXES):
        from magseg_ray.chips.read import open_scene, read_padded

        with open_scene(labels, store) as src:
            return read_padded(src, [1], row, col, height, width)[0][0].astype(np.int64)
    import shapely

    layer = _layer(labels, str(crs))
    window = transform @ Affine.translation(col, row)
    x0, y0 = window @ (0, 0)
    x1, y1 = window @ (width, height)
    hits = layer.sindex.query(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    shapes = [(layer.geometry.iloc[i], int(i) + 1) for i in sorted(hits)]
    if not shapes:
        return np.zeros((height, width), np.int64)
    return rasterize(shapes, out_shape=(height, width), transform=window, dtype="int32").astype(np.int64)
