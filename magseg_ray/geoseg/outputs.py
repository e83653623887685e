"""A scene in, GeoSeg's files out: the whole scene read as RGB, then mask, polygons, overlay, result.

:func:`read_scene` reads a local path or an ``s3://`` COG, whole or a window of it (by range
requests, as chips are read: :func:`~magseg_ray.chips.read.read_window`). :func:`write_result` writes, into
one folder:

- ``mask.tif``: uint8 0/1 on the scene's grid (tag ``MAGSEG_KIND=class``, schema ``ai4sf``);
- ``mask.geojson`` (EPSG:4326) and ``mask.gpkg`` (the scene's CRS): the mask's polygons with
  ``query``, ``phrase``, ``case`` and ``area_m2`` (empty layers when the mask is empty);
- ``overlay.png``: the scene with the mask in red, the grounded box in yellow and the refined box
  in cyan;
- ``result.json``: query, phrase, boxes, fusion case, the reason of an empty mask, the
  grounder's answer, keypoints and per-stage seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magseg_ray.errors import SceneError


@dataclass
class Scene:
    image: np.ndarray
    """``H x W x 3`` uint8."""
    transform: object
    crs: object
    uri: str


def read_scene(uri: str, store=None, max_pixels: int = 64_000_000, window=None, read=None) -> Scene:
    """The whole scene, or its ``window`` ``(row_off, col_off, height, width)``, as RGB uint8 with
    that window's transform (refused above ``max_pixels``: cut a window first), read as ``read``
    (a :class:`~magseg_ray.chips.read.ReadConfig`; default: the file's bands, full range)."""
    import rasterio
    from rasterio.transform import Affine

    from magseg_ray.chips.read import ReadConfig, open_scene, read_window

    try:
        with open_scene(uri, store) as src:
            h, w, crs, transform = src.height, src.width, src.crs, src.transform
    except (rasterio.errors.RasterioError, OSError) as e:
        raise SceneError(f"cannot read scene {uri}: {e}") from None
    if crs is None:
        raise SceneError(f"scene {uri} has no CRS")
    row, col, height, width = window or (0, 0, h, w)
    if height * width > max_pixels:
        raise SceneError(f"a {width}x{height} pixel read of scene {uri} is over the {max_pixels:,} GeoSeg reads "
                         "at once; cut a smaller window")
    image, _ = read_window(uri, row, col, height, width, read or ReadConfig(), store)
    return Scene(image, transform @ Affine.translation(col, row), crs, uri)


def mask_polygons(mask: np.ndarray, transform, crs, props: dict):
    """The mask's polygons (4-connected pieces) as a GeoDataFrame in ``crs`` with ``props`` columns."""
    import geopandas as gpd
    import rasterio.features
    import shapely

    geoms = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
        mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4) if v]
    frame = gpd.GeoDataFrame({k: [v] * len(geoms) for k, v in props.items()}, geometry=geoms, crs=crs)
    frame["area_m2"] = frame.to_crs(frame.estimate_utm_crs()).area if len(frame) else []
    return frame


def overlay(image: np.ndarray, result) -> np.ndarray:
    """The scene with the mask blended in red and the boxes outlined (yellow grounded, cyan refined)."""
    out = image.astype(np.float32)
    out[result.mask] = 0.5 * out[result.mask] + 0.5 * np.array([255, 0, 0])
    out = out.astype(np.uint8)
    for box, colour in ((result.refined, (0, 255, 255)), (result.box, (255, 255, 0))):
        if box is not None:
            x1, y1, x2, y2 = box
            out[y1, x1:x2] = out[y2 - 1, x1:x2] = colour
            out[y1:y2, x1] = out[y1:y2, x2 - 1] = colour
    return out


def result_record(result, query: str) -> dict:
    """The JSON-able summary of a :class:`~.pipeline.Result`."""
    return {"query": query, "phrase": result.phrase, "box": result.box, "refined": result.refined,
            "case": result.case, "score": result.score, "reason": result.reason, "answer": result.answer,
            "pixels": int(result.mask.sum()), "points": [list(p) for p in result.points],
            "seconds": {k: round(v, 4) for k, v in result.seconds.items()}}


def write_result(out: str | Path, scene: Scene, result, query: str) -> dict:
    """Write the five files of one query into ``out``; returns the ``result.json`` record."""
    import rasterio
    from PIL import Image

    from magseg_ray.files import replace_atomically, write_atomic
    from magseg_ray.masks.schemas import KIND_TAG

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = result.mask.shape

    def write_tif(tmp):
        with rasterio.open(tmp, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=scene.crs,
                           transform=scene.transform, compress="deflate") as dst:
            dst.write(result.mask.astype(np.uint8), 1)
            dst.update_tags(**{KIND_TAG: "class"})

    replace_atomically(out / "mask.tif", write_tif)
    polygons = mask_polygons(result.mask, scene.transform, scene.crs,
                             {"query": query, "phrase": result.phrase, "case": result.case})
    replace_atomically(out / "mask.gpkg", lambda tmp: polygons.to_file(tmp, driver="GPKG", layer="mask"))
    write_atomic(out / "mask.geojson", polygons.to_crs("EPSG:4326").to_json())
    replace_atomically(out / "overlay.png", lambda tmp: Image.fromarray(overlay(scene.image, result)).save(tmp, format="PNG"))
    record = result_record(result, query)
    write_atomic(out / "result.json", json.dumps(record, indent=1))
    return record
