"""Load a prediction and its truth, raster or vector, onto one pixel grid for :mod:`.metrics`.

Inputs by file name: ``.tif``/``.tiff`` are rasters, ``.parquet``/``.geoparquet`` are GeoParquet,
anything else is read with :func:`geopandas.read_file` (GeoPackage, GeoJSON, Shapefile, ...).

- Rasters are *class* rasters (values are class indices of the schema) or *instance* rasters
  (0 = no field, k = field k). ``kind="auto"`` takes the GeoTIFF tag ``MAGSEG_KIND``
  (``class`` or ``instance``) where present, else treats ``uint8`` as class and any other dtype
  as instance. Nodata pixels, and grid pixels the raster does not cover, become 0.
- Where a *prediction raster* has no data (nodata, or outside it), the truth is blanked too: a
  map of part of a scene (an AOI) is scored on the part it maps, with truth fields clipped to it.
- Vectors are polygons rasterized as instances, one id per feature in file order (a later
  feature overwrites an earlier one where they overlap), pixel centres inside (``all_touched``
  off), after reprojecting to the grid's CRS.

The grid is the truth raster's; for a vector truth, the prediction raster's; for two vectors,
the truth's bounds (the prediction's where the truth is empty) in the truth's CRS at
``resolution``. Rasters in another CRS or grid are warped onto it with nearest resampling.
Class masks come from instance rasters via ``classes_from_instances``, and instances from
class rasters via ``instances_from_classes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import array_bounds, from_origin
from rasterio.warp import Resampling, reproject, transform_bounds

from magseg_ray.errors import ConfigError, RasterInputError
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import Schema, classes_from_instances, get_schema

KINDS = ("auto", "class", "instance")
"""Accepted raster kinds; vectors are always instances."""
KIND_TAG = "MAGSEG_KIND"
"""GeoTIFF tag that names a raster's kind (``class`` or ``instance``)."""


@dataclass(frozen=True)
class AlignedPair:
    """Prediction and truth on one grid: class masks (uint8) and instance rasters (0 = none)."""

    pred_classes: np.ndarray
    truth_classes: np.ndarray
    pred_instances: np.ndarray
    truth_instances: np.ndarray
    transform: Affine
    crs: CRS


class _Raster(NamedTuple):
    path: Path
    data: np.ndarray
    transform: Affine
    crs: CRS
    kind: str
    valid: np.ndarray
    """Pixels that hold data (not nodata)."""


class _Vector(NamedTuple):
    path: Path
    parts: gpd.GeoSeries
    """Polygonal parts of the features."""
    ids: np.ndarray
    """Instance id of each part: its feature's position in the file plus 1."""


class _Grid(NamedTuple):
    transform: Affine
    crs: CRS
    shape: tuple[int, int]
    source: Path
    """The input the grid was taken from."""


def _read_raster(path: Path, kind: str) -> _Raster:
    """Band 1 of a raster with nodata set to 0, and its kind resolved."""
    try:
        with rasterio.open(path) as src:
            data, nodata, tag = src.read(1), src.nodata, src.tags().get(KIND_TAG)
            transform, crs = src.transform, src.crs
    except rasterio.errors.RasterioError as e:
        raise RasterInputError(f"{path}: cannot read raster: {e}") from None
    if crs is None:
        raise RasterInputError(f"{path}: raster has no CRS")
    valid = np.ones(data.shape, bool) if nodata is None else data != nodata
    if nodata is not None:
        data[~valid] = 0
    if kind == "auto":
        kind = tag or ("class" if data.dtype == np.uint8 else "instance")
    if kind not in KINDS[1:]:
        raise RasterInputError(f"{path}: tag {KIND_TAG}={kind!r} is neither 'class' nor 'instance'")
    if kind == "instance" and data.size and data.min() < 0:
        raise RasterInputError(f"{path}: instance raster holds negative ids")
    return _Raster(path, data, transform, crs, kind, valid)


def _read_vector(path: Path, make_valid: bool = False) -> _Vector:
    """Polygonal parts of a vector file's features, checked for a CRS and valid polygons.

    Each feature must be valid (or, with ``make_valid``, is repaired by ``shapely.make_valid``)
    and, unless empty, hold a polygon: non-polygonal members of a geometry collection (such as the
    zero-area lines that repairs leave) are dropped.
    """
    try:
        parquet = path.suffix.lower() in (".parquet", ".geoparquet")
        gdf = gpd.read_parquet(path) if parquet else gpd.read_file(path)
    except Exception as e:  # the readers raise many unrelated types for a bad file
        raise RasterInputError(f"{path}: cannot read vector file: {e}") from None
    if gdf.crs is None:
        raise RasterInputError(f"{path}: vector file has no CRS")
    geoms = gdf.geometry.to_numpy()
    if make_valid:
        geoms = shapely.make_valid(geoms)
    parts, index = shapely.get_parts(geoms, return_index=True)
    polygonal = np.isin(shapely.get_type_id(parts), (3, 6))  # Polygon, MultiPolygon
    parts, index = parts[polygonal], index[polygonal]
    without_polygon = ~np.isin(np.arange(len(geoms)), index) & ~shapely.is_empty(geoms)
    for bad, what in (
        (~shapely.is_valid(geoms), "invalid geometries"),
        (without_polygon, "features without a polygon"),
    ):
        rows = np.flatnonzero(bad)
        if rows.size:
            hint = " (make_valid / --make-valid repairs them)" if what == "invalid geometries" else ""
            raise RasterInputError(f"{path}: {rows.size} {what}, e.g. feature #{rows[0]}{hint}")
    return _Vector(path, gpd.GeoSeries(parts, crs=gdf.crs), index + 1)


def _read(path: str | Path, kind: str, make_valid: bool = False) -> _Raster | _Vector:
    """A raster or vector input by file name (see the module docstring)."""
    if kind not in KINDS:
        raise ConfigError(f"raster kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise RasterInputError(f"{path}: no such file")
    return _read_raster(path, kind) if path.suffix.lower() in (".tif", ".tiff") else _read_vector(path, make_valid)


def _grid(truth: _Raster | _Vector, pred: _Raster | _Vector, resolution: float | None) -> _Grid:
    """The evaluation grid (see the module docstring)."""
    for src in (truth, pred):
        if isinstance(src, _Raster):
            return _Grid(src.transform, src.crs, src.data.shape, src.path)
    if resolution is None or not resolution > 0:
        raise ConfigError(f"{truth.path} and {pred.path} are both vector files: give a positive resolution")
    parts = truth.parts if len(truth.parts) else pred.parts.to_crs(truth.parts.crs)
    if not len(parts):
        raise RasterInputError(f"{truth.path} and {pred.path} are both empty: no extent to evaluate on")
    west, south, east, north = parts.total_bounds
    shape = (max(1, math.ceil((north - south) / resolution)), max(1, math.ceil((east - west) / resolution)))
    transform = from_origin(west, north, resolution, resolution)
    return _Grid(transform, CRS.from_user_input(truth.parts.crs), shape, truth.path)


def _check_overlap(path: Path, bounds, grid: _Grid) -> None:
    """Raise unless ``bounds`` (west, south, east, north in the grid CRS) overlap the grid."""
    west, south, east, north = bounds
    g_west, g_south, g_east, g_north = array_bounds(*grid.shape, grid.transform)
    if not (min(east, g_east) > max(west, g_west) and min(north, g_north) > max(south, g_south)):
        raise RasterInputError(f"{path} and {grid.source} do not overlap")


def _on_grid(src: _Raster | _Vector, grid: _Grid, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Class mask and instance raster of one input on the grid."""
    if isinstance(src, _Vector):
        parts = src.parts.to_crs(grid.crs)
        instances = np.zeros(grid.shape, np.int32)
        if len(parts):
            _check_overlap(src.path, parts.total_bounds, grid)
            shapes = zip(parts, src.ids.tolist())
            instances = rasterize(
                shapes, grid.shape, transform=grid.transform, all_touched=False, dtype=np.int32
            )
        return classes_from_instances(instances, schema), instances
    bounds = array_bounds(*src.data.shape, src.transform)
    _check_overlap(src.path, transform_bounds(src.crs, grid.crs, *bounds), grid)
    data = src.data if src.kind == "instance" else schema.check_mask(src.data, str(src.path))
    warped = np.zeros(grid.shape, data.dtype)
    reproject(
        data,
        warped,
        src_transform=src.transform,
        src_crs=src.crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        resampling=Resampling.nearest,
    )
    if src.kind == "class":
        return warped, instances_from_classes(warped, schema)
    return classes_from_instances(warped, schema), warped


def load_pair(
    pred_path: str | Path,
    truth_path: str | Path,
    schema: str | Schema,
    pred_kind: str = "auto",
    truth_kind: str = "auto",
    resolution: float | None = None,
    make_valid: bool = False,
) -> AlignedPair:
    """Read a prediction and its truth onto one grid (see the module docstring for the rules).

    ``pred_kind``/``truth_kind`` (``auto``, ``class``, ``instance``) apply to rasters only;
    ``resolution`` (CRS units per pixel) is needed, and used, only when both inputs are vectors.
    Raises :class:`RasterInputError` for a missing or unreadable file, an input without a CRS,
    inputs that do not overlap, or invalid or non-polygon geometries; :class:`SchemaError` for a
    class raster with values outside the schema; :class:`ConfigError` for a bad kind or a
    missing resolution. An empty truth is not an error. ``make_valid`` repairs invalid polygons
    instead of refusing them.
    """
    schema = get_schema(schema)
    truth, pred = _read(truth_path, truth_kind, make_valid), _read(pred_path, pred_kind, make_valid)
    grid = _grid(truth, pred, resolution)
    truth_classes, truth_instances = _on_grid(truth, grid, schema)
    pred_classes, pred_instances = _on_grid(pred, grid, schema)
    if isinstance(pred, _Raster) and not pred.valid.all():
        covered = np.zeros(grid.shape, np.uint8)
        reproject(pred.valid.astype(np.uint8), covered, src_transform=pred.transform, src_crs=pred.crs,
                  dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.nearest)
        outside = covered == 0
        truth_classes, truth_instances = truth_classes.copy(), truth_instances.copy()
        truth_classes[outside], truth_instances[outside] = 0, 0
    return AlignedPair(pred_classes, truth_classes, pred_instances, truth_instances, grid.transform, grid.crs)
