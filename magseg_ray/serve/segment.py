"""``POST /segment``: a request body -> an area -> the scene window under it -> GeoSeg -> GeoJSON.

Body (JSON object): ``{"query": str, "bbox": [west, south, east, north]}`` in EPSG:4326, or
``{"query": str, "z": int, "x": int, "y": int}``, a WebMercatorQuad tile (the tiles' rules, zoom
``min_zoom`` or finer). The server answers it in four steps:

1. **area** (:func:`parse_body`): the query (stripped; empty: :class:`QueryError`) and the area,
   an EPSG:4326 rectangle; any other key, a bbox that is not four finite numbers with west < east
   within -180..180 and south < north within -90..90, or a bad tile: :class:`TileRequestError`.
2. **scene** (:func:`area_scene`): of the catalogued scenes that meet the area (none:
   :class:`NotCoveredError`), the one that covers most of it; the first by id on a tie.
3. **window** (:func:`area_window`): the area's envelope on that scene's own pixel grid. An
   area of more than ``max_px`` pixels at the scene's resolution is refused
   (:class:`RequestTooLargeError`, 413, naming ``geoseg_max_px``: ask for a smaller area); otherwise
   the window is cut to the scene (nothing left: :class:`NotCoveredError`). A window that fits in
   one chip (``chip_size``) is read exactly and is the one chip. A larger one streams through the
   AOI job's path (:mod:`magseg_ray.geoseg.aoi`): the scene grid's chips that meet the area
   (:func:`~magseg_ray.chips.windows.chip_windows`), read one at a time
   (:func:`~magseg_ray.chips.read.read_chip`), each through
   :func:`~magseg_ray.geoseg.aoi.segment_chip`, pasted by the mapping overlap rule
   (:func:`~magseg_ray.stitch.mosaic.paste`). In a chip GeoSeg takes the whole chip as the box,
   unless a grounder is loaded: it then finds the box in the chip.
4. **answer** (:func:`feature_collection`, :func:`chips_collection`): a GeoJSON FeatureCollection
   in EPSG:4326 of the mask's polygons (4-connected pieces) clipped to the area, each with
   ``query``, ``phrase``, ``case``, ``score`` (those of the chip that owns a point inside it),
   ``scene_id`` and fiboa ``metrics:area`` (m²) and ``metrics:perimeter`` (m). With several chips
   its ``properties`` hold ``query``, ``scene_id``, ``area``, ``window`` (the chips' extent) and
   ``chips``: each chip's record as one chip's properties below, with its ``chip_id``. With one, its ``properties``
   (a foreign member, RFC 7946 section 6.1) hold :func:`~magseg_ray.geoseg.outputs.result_record`
   (query, phrase, fusion case, ``reason`` of an empty mask, the grounder's answer, ``box`` and
   ``refined`` in window pixels, keypoints, per-stage seconds), plus ``scene_id``, ``area`` (what was
   asked), ``window`` (the scene pixels read) and ``box_lonlat`` / ``refined_lonlat`` (the grounded
   and the segmented box as [west, south, east, north]).

:class:`AreaSegmenter` holds a replica's GeoSeg pipeline and runs the steps. Errors map to HTTP
statuses in :mod:`magseg_ray.serve.deployment`: 400, 404, and 502 for a scene that cannot be read.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from magseg_ray.chips.windows import scene_transform
from magseg_ray.errors import NotCoveredError, QueryError, RequestTooLargeError, SceneError, TileRequestError
from magseg_ray.serve.tiles import clip, parse_tile, scenes_under

BODY_KEYS = ("query", "bbox", "z", "x", "y")
BODY_FORMS = ('{"query": ..., "bbox": [west, south, east, north]} (EPSG:4326) '
              'or {"query": ..., "z": ..., "x": ..., "y": ...}')


@dataclass(frozen=True)
class Area:
    """What a ``/segment`` request asks for."""

    query: str
    footprint: shapely.Polygon
    """The area in EPSG:4326."""
    name: str
    """``bbox [w, s, e, n]`` or ``tile z/x/y``, for messages and the answer's ``area``."""


MAX_BODY_BYTES = 16 * 1024
"""Largest ``/segment`` body: a query and an area take far less (413 past it)."""
MAX_QUERY_CHARS = 500
"""Longest query in characters (400 past it): a sentence or two, what the grounders are prompted with."""


def read_body(raw: bytes):
    """The JSON of a request body of ``raw`` bytes; :class:`RequestTooLargeError` past
    :data:`MAX_BODY_BYTES`, :class:`TileRequestError` for what is not JSON (nesting too deep too)."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestTooLargeError(f"the body is {len(raw)} bytes; /segment takes at most {MAX_BODY_BYTES}: "
                                   f"{BODY_FORMS}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        raise TileRequestError(f"the body must be JSON: {BODY_FORMS}") from None


def parse_body(body, min_zoom: int) -> Area:
    """The request's :class:`Area` (see module doc for what is refused)."""
    from magseg_ray.geoseg.grounder import check_query

    if not isinstance(body, dict):
        raise TileRequestError(f"the body must be a JSON object: {BODY_FORMS}")
    unknown = sorted(set(body) - set(BODY_KEYS))
    if unknown:
        raise TileRequestError(f"unknown keys {unknown} in the body; it takes {BODY_FORMS}")
    query = check_query(body.get("query"))
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(query)} characters; /segment takes at most {MAX_QUERY_CHARS}")
    tile_keys = sorted({"z", "x", "y"} & set(body))
    if ("bbox" in body) == bool(tile_keys):
        raise TileRequestError(f"give either a bbox or a tile's z, x and y: {BODY_FORMS}")
    if tile_keys:
        values = [body.get(k) for k in "zxy"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TileRequestError(f"a tile needs integers z, x and y, got {body.get('z')!r}, {body.get('x')!r}, {body.get('y')!r}")
        tile = parse_tile(*(str(v) for v in values), min_zoom)
        return Area(query, tile.footprint, f"tile {tile}")
    bbox = body["bbox"]
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    if not numbers or not (-180 <= bbox[0] < bbox[2] <= 180 and -90 <= bbox[1] < bbox[3] <= 90):
        raise TileRequestError(f"bbox must be [west, south, east, north] in degrees (EPSG:4326) with west < east "
                               f"within -180..180 and south < north within -90..90, got {bbox!r}")
    return Area(query, shapely.box(*bbox), f"bbox {[float(v) for v in bbox]}")


def area_scene(scenes: gpd.GeoDataFrame, area: Area) -> dict:
    """The catalog row of the scene that covers most of the area (first by id on a tie); 404 if none."""
    hits = scenes_under(scenes, area.footprint, area.name)
    shares = shapely.area(shapely.intersection(hits.geometry.values, area.footprint))
    return hits.iloc[int(np.argmax(shares))].to_dict()


def area_window(scene: dict, area: Area, max_px: int) -> tuple[int, int, int, int]:
    """``(row_off, col_off, height, width)`` of the area's envelope on the scene's pixel grid, cut to
    the scene; 413 when the envelope (before the cut) has more than ``max_px`` pixels."""
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", scene["crs"], *area.footprint.bounds, densify_pts=21)
    inverse = ~scene_transform(pd.Series(scene))
    c0, r0 = inverse @ (minx, maxy)
    c1, r1 = inverse @ (maxx, miny)
    c0, r0, c1, r1 = math.floor(c0), math.floor(r0), math.ceil(c1), math.ceil(r1)
    if (r1 - r0) * (c1 - c0) > max_px:
        raise RequestTooLargeError(
            f"{area.name} is {c1 - c0}x{r1 - r0} = {(r1 - r0) * (c1 - c0):,} pixels of scene {scene['id']}, over "
            f"the {max_px:,} one /segment request may read (geoseg_max_px); ask for a smaller area")
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, int(scene["width"])), min(r1, int(scene["height"]))
    if c1 <= c0 or r1 <= r0:
        raise NotCoveredError(f"{area.name} only touches the edge of scene {scene['id']}: no pixel of it is inside")
    return r0, c0, r1 - r0, c1 - c0


def _lonlat(box, transform, crs) -> list[float] | None:
    """A pixel box of a window as [west, south, east, north] in EPSG:4326."""
    if box is None:
        return None
    (x1, y1), (x2, y2) = transform @ (box[0], box[1]), transform @ (box[2], box[3])
    bounds = transform_bounds(crs, "EPSG:4326", min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2), densify_pts=21)
    return [round(v, 7) for v in bounds]


def _features(polygons: gpd.GeoDataFrame, area: Area) -> dict:
    """The polygons cut to the area and measured, as a GeoJSON FeatureCollection in EPSG:4326."""
    from magseg_ray.fields.polygons import measure

    polygons = measure(clip(polygons.drop(columns="area_m2").to_crs("EPSG:4326"), area.footprint))
    return json.loads(polygons.to_json(na="null", drop_id=True))


def _chip_record(result, query: str, transform, crs, window: tuple[int, int, int, int]) -> dict:
    from magseg_ray.geoseg.outputs import result_record

    row_off, col_off, height, width = window
    return {**result_record(result, query),
            "window": {"row_off": row_off, "col_off": col_off, "height": height, "width": width},
            "box_lonlat": _lonlat(result.box, transform, crs), "refined_lonlat": _lonlat(result.refined, transform, crs)}


def feature_collection(result, scene, area: Area, scene_id: str, window: tuple[int, int, int, int]) -> dict:
    """The answer of a one-chip request (see module doc) from GeoSeg's :class:`~magseg_ray.geoseg.pipeline.Result`
    on ``scene``, the :class:`~magseg_ray.geoseg.outputs.Scene` of the window read."""
    from magseg_ray.geoseg.outputs import mask_polygons

    props = {"query": area.query, "phrase": result.phrase, "case": result.case, "score": result.score,
             "scene_id": scene_id}
    collection = _features(mask_polygons(result.mask, scene.transform, scene.crs, props), area)
    collection["properties"] = {**_chip_record(result, area.query, scene.transform, scene.crs, window),
                                "scene_id": scene_id, "area": area.name}
    return collection


def chips_collection(mask: np.ndarray, origin: tuple[int, int], scene: dict, area: Area, config,
                     chips: dict[str, dict]) -> dict:
    """The answer of a request of several chips (see module doc): ``mask`` is the pasted mask of the
    chips' extent, whose top-left is scene pixel ``origin``; ``chips`` the chip records by chip id."""
    from magseg_ray.geoseg.outputs import mask_polygons
    from magseg_ray.stitch.mosaic import owner_chips

    scene_grid = scene_transform(pd.Series(scene))
    transform = scene_grid @ Affine.translation(origin[1], origin[0])
    polygons = mask_polygons(mask, transform, scene["crs"], {"query": area.query})
    points = polygons.representative_point()
    cols, rows = ~scene_grid @ (points.x.to_numpy(), points.y.to_numpy())
    owners = owner_chips(list(chips), np.floor(rows).astype(int), np.floor(cols).astype(int), config)
    for name in ("phrase", "case", "score"):
        polygons[name] = [chips[o][name] if o else None for o in owners]
    polygons["scene_id"] = scene["id"]
    collection = _features(polygons, area)
    height, width = mask.shape
    collection["properties"] = {
        "query": area.query, "scene_id": scene["id"], "area": area.name,
        "window": {"row_off": origin[0], "col_off": origin[1], "height": height, "width": width},
        "chips": [{"chip_id": k, **v} for k, v in chips.items()]}
    return collection


class AreaSegmenter:
    """A replica's GeoSeg: the pipeline built once, at replica start (a bad checkpoint folder fails
    the deployment where its operator sees it, no user's request pays the load), its field-model
    route the replica's own model, not a second copy; calls run one at a time (its routes keep
    per-call state). GeoSeg's modules are imported here, so a server without GeoSeg never loads them."""

    def __init__(self, settings, segmenter, card, seed_px: float):
        from magseg_ray.geoseg.fieldroute import FieldRoute
        from magseg_ray.geoseg.run import build_pipeline

        models, config = settings.geoseg_models()
        route = FieldRoute(segmenter.model, segmenter.processor, card.prompt(), card.chip_size,
                           batch_size=settings.patch_batch, max_new_tokens=settings.max_new_tokens or None,
                           boundary_bias=card.boundary_bias, field_seed_px=seed_px)
        self.pipeline = build_pipeline(models, config, field_route=route)
        self.max_px, self.chip_size = settings.geoseg_max_px, settings.geoseg_chip_size
        self.read = settings.read_config(card)
        self._lock = threading.Lock()

    def segment(self, area: Area, scenes: gpd.GeoDataFrame, store) -> dict:
        """GeoSeg on the area's window of the scene that covers most of it (see module doc)."""
        from magseg_ray.geoseg.aoi import segment_chip
        from magseg_ray.geoseg.outputs import read_scene

        scene = area_scene(scenes, area)
        window = area_window(scene, area, self.max_px)
        if max(window[2], window[3]) > self.chip_size:
            return self._segment_chips(area, scene, store)
        try:
            pixels = read_scene(scene["uri"], store, window=window, read=self.read)
        except SceneError as e:
            raise SceneError(f"scene {scene['id']} cannot be read: {e}") from None
        with self._lock:
            *_, result = segment_chip(self.pipeline, area.query, pixels.image, np.ones(window[2:], bool))
        return feature_collection(result, pixels, area, scene["id"], window)

    def _segment_chips(self, area: Area, scene: dict, store) -> dict:
        """An area larger than one chip, chip by chip (see module doc)."""
        from magseg_ray.chips.read import read_chip
        from magseg_ray.chips.windows import ChipConfig, chip_windows
        from magseg_ray.geoseg.aoi import segment_chip
        from magseg_ray.masks.schemas import NO_DATA
        from magseg_ray.stitch.mosaic import paste

        config = ChipConfig.for_chip_size(self.chip_size)
        tasks = chip_windows(gpd.GeoDataFrame([scene], geometry="geometry", crs="EPSG:4326"), area.footprint, config)
        origin = (min(t.row_off for t in tasks), min(t.col_off for t in tasks))
        classes = np.full((max(t.row_off for t in tasks) + config.chip_size - origin[0],
                           max(t.col_off for t in tasks) + config.chip_size - origin[1]), NO_DATA, np.uint8)
        offsets, chips = {(t.row_off, t.col_off) for t in tasks}, {}
        grid = scene_transform(pd.Series(scene))
        for task in tasks:  # one chip in memory at a time
            try:
                chip = read_chip(task, self.read, None, store)
            except SceneError as e:
                raise SceneError(f"scene {scene['id']} cannot be read: {e}") from None
            with self._lock:
                values, _, _, result = segment_chip(self.pipeline, area.query, chip.image, chip.valid)
            paste(classes, origin, task.row_off, task.col_off, values, offsets, config)
            window = (task.row_off, task.col_off, task.size, task.size)
            chips[task.chip_id] = _chip_record(result, area.query, grid @ Affine.translation(task.col_off, task.row_off),
                                               scene["crs"], window)
        return chips_collection(classes == 1, origin, scene, area, config, chips)
