"""Tiles: z/x/y -> the scenes and chips under it -> its classes (PNG) and field polygons (GeoJSON).

URLs follow the TiTiler convention on the WebMercatorQuad tile matrix set (morecantile), 256 px
tiles. A tile is made scene by scene, in catalog id order:

1. **plan** (:func:`plan_tile`): the catalogued scenes whose footprint meets the tile (none: 404);
   for each, either a precomputed ``map_region`` mask that covers the tile
   (:mod:`magseg_ray.serve.maps`), or the chips of the scene's own pixel grid that meet the tile,
   on exactly ``map_region``'s chip grid (:func:`~magseg_ray.chips.windows.chip_windows` with the
   model card's chip size and the same overlap), so a chip computed for one tile serves its
   neighbours and a chip here is the chip ``map_region`` computes. A tile that needs more than
   ``max_chips_per_tile`` chips of a scene is too coarse for per-patch inference (400).
2. **stitch** (:func:`stitch_chips`): the chips' classes pasted on the scene grid with
   ``map_region``'s overlap rule (:func:`~magseg_ray.stitch.mosaic.kept_window`, neighbours taken
   from the scene's whole chip grid).
3. **reproject** (:func:`to_tile`): each scene's classes into the tile's Web Mercator grid
   (nearest neighbour, 255 = no data); where scenes overlap, the first scene by id that has data
   wins (``map_region``'s seam rule gives each place to the first scene by id too).
4. **render**: classes -> a transparent PNG in the schema's colours (:func:`render_png`), or the
   scene's field polygons (:func:`~magseg_ray.fields.polygons.scene_fields`) clipped to the part of
   the tile each scene owns (:func:`tile_fields`), as GeoJSON in EPSG:4326.

A tile's fields are made as ``map_region`` makes a scene's: the same core depth and the same
:class:`~magseg_ray.fields.rules.FieldRules` (the model card's, :func:`~magseg_ray.fields.rules.resolve_rules`),
on the stitched window of step 2 instead of the whole scene. The edge split reads the scene's pixels
under that window and :func:`~magseg_ray.fields.edges.reach_px` beyond it (:func:`window_image`), so
its edge strength is the whole scene's there, exactly. Where the window is the whole scene (a tile
whose chips are all of the scene's), the fields are ``map_region``'s, clipped to the tile. Otherwise
they can differ near the window's edge and by the window's statistics: a field the window cuts is
measured by its part in the window (the minimum size, its core depth), and the edge split's
threshold and band scaling are taken over the window's field pixels, not the scene's. Measured on
the demo NAIP scene mapped as its truth fields with the demo card (every tile inside it): at z17, 95%
of a tile's fields lie within IoU 0.9 of one of ``map_region``'s clipped to it (82% within 0.99), the
union of the fields within IoU 0.987; at z18, 92% (74%), 0.952. Without the rules on either side:
100% and 99.7%; the tile server without them against ``map_region`` with them (before): 77% and 76%.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import geopandas as gpd
import morecantile
import numpy as np
import pandas as pd
import shapely
from rasterio.transform import Affine, from_bounds
from rasterio.warp import Resampling, reproject

from magseg_ray.chips.read import ReadConfig, read_window
from magseg_ray.chips.windows import ChipConfig, ChipTask, chip_windows, scene_transform
from magseg_ray.errors import NotCoveredError, TileRequestError
from magseg_ray.fields.edges import reach_px
from magseg_ray.fields.rules import FieldRules, pixel_metres
from magseg_ray.masks.schemas import NO_DATA, Schema
from magseg_ray.stitch.mosaic import kept_window

TMS = morecantile.tms.get("WebMercatorQuad")
TILE_SIZE = 256
WEB_MERCATOR = "EPSG:3857"
ALPHA = {"background": 70, "other": 170}
"""Opacity of the overlay: background classes are a light tint (so the mapped area shows), the
others strong; no-data pixels are fully transparent."""


@dataclass(frozen=True)
class Tile:
    """A WebMercatorQuad tile."""

    z: int
    x: int
    y: int

    def __str__(self) -> str:
        return f"{self.z}/{self.x}/{self.y}"

    @property
    def xy_bounds(self) -> tuple[float, float, float, float]:
        return tuple(TMS.xy_bounds(self.x, self.y, self.z))

    @property
    def lnglat_bounds(self) -> tuple[float, float, float, float]:
        return tuple(TMS.bounds(self.x, self.y, self.z))

    @property
    def footprint(self) -> shapely.Polygon:
        """The tile in EPSG:4326 (Mercator keeps lon/lat rectangles rectangular)."""
        return shapely.box(*self.lnglat_bounds)

    @property
    def transform(self) -> Affine:
        return from_bounds(*self.xy_bounds, TILE_SIZE, TILE_SIZE)


def parse_tile(z: str, x: str, y: str, min_zoom: int) -> Tile:
    """A tile from URL parts; :class:`TileRequestError` (400) saying what is wrong otherwise."""
    try:
        zi, xi, yi = int(z), int(x), int(y)
    except ValueError:
        raise TileRequestError(f"tile {z}/{x}/{y}: z, x and y must be integers") from None
    if not TMS.minzoom <= zi <= TMS.maxzoom:
        raise TileRequestError(f"tile {z}/{x}/{y}: zoom must be within {TMS.minzoom}-{TMS.maxzoom}")
    n = 2**zi
    if not (0 <= xi < n and 0 <= yi < n):
        raise TileRequestError(f"tile {z}/{x}/{y}: x and y must be within 0-{n - 1} at zoom {zi}")
    if zi < min_zoom:
        raise TileRequestError(f"tile {z}/{x}/{y}: zoom {zi} is too coarse for per-patch inference; "
                               f"this server answers zoom {min_zoom} and finer")
    return Tile(zi, xi, yi)


class GridOffsets:
    """The ``(row_off, col_off)`` of every chip of a scene's grid (``map_region``'s grid), as a set
    that is never materialised: membership is two range checks."""

    def __init__(self, height: int, width: int, chip: ChipConfig):
        self.rows = range(0, max(height - chip.overlap, 1), chip.stride)
        self.cols = range(0, max(width - chip.overlap, 1), chip.stride)

    def __contains__(self, offset) -> bool:
        row, col = offset
        return row in self.rows and col in self.cols


@dataclass
class Layer:
    """One scene's classes under a tile, on the scene's grid."""

    scene: dict
    """The scene's catalog row (``id``, ``crs``, ``gsd``, ..., ``geometry``: its EPSG:4326 footprint)."""
    tasks: list[ChipTask] = field(default_factory=list)
    """Chips to compute (empty when precomputed)."""
    run: str | None = None
    """Root of the ``map_region`` output the classes come from, if precomputed."""
    classes: np.ndarray | None = None
    confidence: np.ndarray | None = None
    transform: Affine | None = None


def scenes_under(scenes: gpd.GeoDataFrame, area: shapely.Geometry, name: str) -> gpd.GeoDataFrame:
    """Catalogued scenes whose footprint meets ``area`` (EPSG:4326; a tile's footprint, a ``/segment``
    area), by id; :class:`NotCoveredError` (404) naming it if none."""
    hits = scenes.iloc[scenes.sindex.query(area, predicate="intersects")]
    hits = hits[hits.intersects(area)]
    if hits.empty:
        b = [round(v, 6) for v in area.bounds]
        raise NotCoveredError(f"{name} (lon/lat bounds {b}) is outside every one of the {len(scenes)} catalogued scenes")
    return hits.sort_values("id")


def plan_tile(tile: Tile, scenes: gpd.GeoDataFrame, chip: ChipConfig, max_chips: int, maps=None) -> list[Layer]:
    """One :class:`Layer` per scene under the tile: precomputed (``maps`` covers it) or the chips
    to compute (see module doc)."""
    layers = []
    hits = scenes_under(scenes, tile.footprint, f"tile {tile}")
    for i in range(len(hits)):
        frame = hits.iloc[[i]]
        scene = frame.iloc[0].to_dict()
        found = maps.window(scene, tile) if maps is not None else None
        if found is not None:
            classes, transform, root = found
            layers.append(Layer(scene, run=root, classes=classes, transform=transform))
            continue
        tasks = chip_windows(frame, tile.footprint, chip)
        if len(tasks) > max_chips:
            finer = fine_enough_zoom(tile, float(scene["gsd"]), chip, max_chips)
            raise TileRequestError(
                f"tile {tile}: zoom {tile.z} is too coarse for per-patch inference: it needs {len(tasks)} "
                f"chips of scene {scene['id']} (at most {max_chips}); ask for zoom {finer} or finer")
        layers.append(Layer(scene, tasks=tasks))
    return layers


def fine_enough_zoom(tile: Tile, gsd: float, chip: ChipConfig, max_chips: int) -> int:
    """The coarsest zoom whose tiles need at most ``max_chips`` chips of a scene of ``gsd`` metres
    (a tile side of ``n`` chip strides meets at most ``n + 2`` chips per row and column)."""
    lat = math.radians(tile.footprint.centroid.y)
    for z in range(tile.z + 1, TMS.maxzoom + 1):
        side_px = 2 * math.pi * 6378137.0 * math.cos(lat) / 2**z / gsd
        if (side_px / chip.stride + 2) ** 2 <= max_chips:
            return z
    return TMS.maxzoom


def stitch_chips(layer: Layer, chips: list[tuple[np.ndarray, np.ndarray]], chip: ChipConfig, patch_size: int) -> None:
    """Paste the layer's computed chips (in ``layer.tasks`` order) into one raster on the scene grid
    with ``map_region``'s overlap rule; sets ``classes``, ``confidence`` and ``transform``."""
    scene, tasks = layer.scene, layer.tasks
    height, width = int(scene["height"]), int(scene["width"])
    grid = GridOffsets(height, width, chip)
    r0, c0 = min(t.row_off for t in tasks), min(t.col_off for t in tasks)
    r1 = min(max(t.row_off + t.size for t in tasks), height)
    c1 = min(max(t.col_off + t.size for t in tasks), width)
    classes = np.full((r1 - r0, c1 - c0), NO_DATA, np.uint8)
    confidence = np.full((r1 - r0, c1 - c0), np.nan, np.float32)
    for t, (chip_classes, chip_conf) in zip(tasks, chips):
        top, bottom, left, right = kept_window(t.row_off, t.col_off, grid, chip)
        bottom, right = min(bottom, height - t.row_off), min(right, width - t.col_off)
        if bottom <= top or right <= left:
            continue
        conf = np.repeat(np.repeat(chip_conf, patch_size, 0), patch_size, 1)
        rows = slice(t.row_off - r0 + top, t.row_off - r0 + bottom)
        cols = slice(t.col_off - c0 + left, t.col_off - c0 + right)
        classes[rows, cols] = chip_classes[top:bottom, left:right]
        confidence[rows, cols] = conf[top:bottom, left:right]
    layer.classes, layer.confidence = classes, confidence
    layer.transform = scene_transform(pd.Series(scene)) @ Affine.translation(c0, r0)


def to_tile(classes: np.ndarray, transform: Affine, crs: str, tile: Tile) -> np.ndarray:
    """A class raster (255 = no data) resampled into the tile's grid, nearest neighbour."""
    out = np.full((TILE_SIZE, TILE_SIZE), NO_DATA, np.uint8)
    reproject(classes, out, src_transform=transform, src_crs=crs, src_nodata=NO_DATA, dst_transform=tile.transform,
              dst_crs=WEB_MERCATOR, dst_nodata=NO_DATA, resampling=Resampling.nearest)
    return out


def tile_classes(layers: list[Layer], tile: Tile) -> np.ndarray:
    """The tile's classes: each scene reprojected, the first scene by id with data winning."""
    out = np.full((TILE_SIZE, TILE_SIZE), NO_DATA, np.uint8)
    for layer in layers:
        mine = to_tile(layer.classes, layer.transform, layer.scene["crs"], tile)
        empty = out == NO_DATA
        out[empty] = mine[empty]
    return out


def colour_table(schema: Schema) -> np.ndarray:
    """256 x RGBA lookup table of the overlay (see :data:`ALPHA`)."""
    lut = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(schema.classes):
        alpha = ALPHA["background"] if i == 0 else ALPHA["other"]
        lut[i] = (*c.color, alpha)
    return lut


def render_png(classes: np.ndarray, schema: Schema) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(colour_table(schema)[classes], "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def classes_of_png(data: bytes, schema: Schema) -> np.ndarray:
    """A rendered tile back to classes (255 where transparent): the inverse of :func:`render_png`."""
    from PIL import Image

    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    out = np.full(rgba.shape[:2], NO_DATA, np.uint8)
    for i, c in enumerate(schema.classes):
        out[(rgba[..., 3] > 0) & (rgba[..., :3] == c.color).all(-1)] = i
    return out


FIELD_COLUMNS = ["id", "scene_id", "confidence", "pixels", "metrics:area", "metrics:perimeter", "source", "geometry"]


def _polygonal(geom):
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, shapely.Polygon) and not g.is_empty]
    return shapely.MultiPolygon(parts) if len(parts) > 1 else (parts[0] if parts else None)


def clip(fields: gpd.GeoDataFrame, area) -> gpd.GeoDataFrame:
    """``fields`` cut to ``area`` (EPSG:4326), polygonal parts only, empty results dropped."""
    if fields.empty:
        return fields
    geoms = [_polygonal(g) for g in shapely.intersection(fields.geometry.values, area)]
    fields = fields.assign(geometry=geoms)
    return fields[fields.geometry.notna()]


def window_image(layer: Layer, rules: FieldRules, store=None, read=None) -> np.ndarray | None:
    """The scene's pixels under the layer's classes and the edge split's reach beyond them on every
    side (read where the scene goes on, mirrored where it ends, as SciPy's filters mirror the whole
    scene ``map_region`` reads), read as the chips are (``read``, a
    :class:`~magseg_ray.chips.read.ReadConfig`); None without an edge split."""
    if not rules.edge_quantile:
        return None
    scene, (h, w) = layer.scene, layer.classes.shape
    col, row = (round(v) for v in ~scene_transform(pd.Series(scene)) @ (layer.transform.c, layer.transform.f))
    m = reach_px(rules.edge_sigma_m / pixel_metres(layer.transform, scene["crs"], (h, w)))
    top, left = max(row - m, 0), max(col - m, 0)
    bottom, right = min(row + h + m, int(scene["height"])), min(col + w + m, int(scene["width"]))
    image, _ = read_window(scene["uri"], top, left, bottom - top, right - left, read or ReadConfig(), store,
                           f"scene {scene['id']} (the edge split of a tile's fields)")
    pad = ((top - row + m, row + h + m - bottom), (left - col + m, col + w + m - right), (0, 0))
    return np.pad(image, pad, mode="symmetric")


def tile_fields(layers: list[Layer], tile: Tile, schema: Schema, simplify_px: float, min_field_px: int,
                seed_px: float = 0.0, rules: FieldRules = FieldRules(), store=None, maps=None,
                read=None) -> gpd.GeoDataFrame:
    """Field polygons of the tile (EPSG:4326): each scene's fields (``rules`` applied, as in the
    module doc) clipped to the part of the tile it owns (newest, least cloud, then id: ``map_region``'s
    rule), precomputed ones from their run's fields."""
    from magseg_ray.fields.polygons import measure, scene_fields
    from magseg_ray.scenes.overlap import owned_areas

    frame = gpd.GeoDataFrame([layer.scene for layer in layers], geometry="geometry", crs="EPSG:4326")
    owned = owned_areas(frame, tile.footprint)
    parts = []
    for layer in layers:
        sid = layer.scene["id"]
        if layer.run is not None:
            fields = maps.fields(layer.run)
            fields = fields[[sid in str(s).split("+") for s in fields["scene_id"]]].assign(source=f"map:{layer.run}")
        else:
            fields = scene_fields(layer.classes, layer.confidence, layer.transform, layer.scene["crs"], schema,
                                  simplify_px, min_field_px, seed_px, rules, window_image(layer, rules, store, read))
            ids = [f"{sid}-tile-{i:06d}" for i in fields["instance"]]  # this tile's fields, numbered in it
            fields = measure(fields).assign(id=ids, scene_id=sid, source="model")
        parts.append(clip(fields, owned[sid])[FIELD_COLUMNS])
    frames = [p for p in parts if len(p)]
    if not frames:
        return gpd.GeoDataFrame({c: [] for c in FIELD_COLUMNS if c != "geometry"}, geometry=[], crs="EPSG:4326")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")
