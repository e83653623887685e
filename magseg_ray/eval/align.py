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

The grid is ``grid_like``'s (a raster named for it) where given, else the truth raster's; for a
vector truth, the prediction raster's; for two vectors, the truth's bounds (the prediction's
where the truth is empty; cut to the AOI's bounds where one is given) at ``resolution`` in the
truth's CRS units, or by default at 1 m in the truth's CRS if that is projected in metres, else
in the truth's UTM zone. Rasters in another CRS or grid are warped onto it with nearest
resampling. Class masks come from instance rasters via ``classes_from_instances``, and
instances from class rasters via ``instances_from_classes`` (a prediction's with ``seed_px`` and
the :class:`~magseg_ray.fields.rules.FieldRules` ``rules``, as the map's fields step made them; a
truth's with every interior component a field).

What is scored, and what is refused:

- An ``aoi`` (a polygon in EPSG:4326, as :func:`~magseg_ray.chips.windows.load_aoi` returns it)
  limits scoring to the pixels whose centres it holds: truth and prediction are blanked outside
  it, so a map of an AOI is not charged with the truth's fields beyond it. :func:`run_aoi` finds
  the AOI of the ``map_region`` run that wrote a prediction.
- A truth on a grid too coarse for it is refused: when fewer than half of a vector truth's fields
  that lie on the grid cover a pixel centre (a 1-degree grid holds none), or a raster truth shows
  fewer than half as many fields on the grid as in its own pixels under it (``grid_like`` a coarse
  raster), the scores would describe the grid, not the map.
- A truth with no field on the scored pixels is not an error, but :attr:`AlignedPair.warnings`
  says so: its instance and object scores are undefined.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
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
from rasterio.windows import from_bounds

from magseg_ray.chips.windows import AOI_CRS, aoi_fingerprint, load_aoi
from magseg_ray.errors import ConfigError, RasterInputError
from magseg_ray.fields.rules import FieldRules, apply_rules, pixel_metres
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import KIND_TAG, Schema, classes_from_instances, get_schema

KINDS = ("auto", "class", "instance")
"""Accepted raster kinds; vectors are always instances."""


@dataclass(frozen=True)
class AlignedPair:
    """Prediction and truth on one grid: class masks (uint8) and instance rasters (0 = none)."""

    pred_classes: np.ndarray
    truth_classes: np.ndarray
    pred_instances: np.ndarray
    truth_instances: np.ndarray
    transform: Affine
    crs: CRS
    warnings: tuple[str, ...] = ()
    """What a reader of the scores should know (an empty truth), one sentence each."""


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


def _raster_grid(path: str | Path) -> _Grid:
    """The pixel grid of a raster, without reading its pixels."""
    try:
        with rasterio.open(path) as src:
            grid = _Grid(src.transform, src.crs, src.shape, Path(path))
    except rasterio.errors.RasterioError as e:
        raise RasterInputError(f"{path}: cannot read raster: {e}") from None
    if grid.crs is None:
        raise RasterInputError(f"{path}: raster has no CRS")
    return grid


def _metric_crs(truth: _Vector, pred: _Vector) -> CRS:
    """The truth's CRS if it is projected in metres, else the UTM zone of the truth (of the
    prediction where the truth is empty)."""
    crs = CRS.from_user_input(truth.parts.crs)
    if crs.is_projected and crs.linear_units in ("metre", "meter"):
        return crs
    parts = truth.parts if len(truth.parts) else pred.parts
    if not len(parts):
        raise RasterInputError(f"{truth.path} and {pred.path} are both empty: no extent to evaluate on")
    return CRS.from_user_input(parts.estimate_utm_crs())


def _grid(truth: _Raster | _Vector, pred: _Raster | _Vector, resolution: float | None, aoi) -> _Grid:
    """The evaluation grid (see the module docstring)."""
    for src in (truth, pred):
        if isinstance(src, _Raster):
            return _Grid(src.transform, src.crs, src.data.shape, src.path)
    crs = CRS.from_user_input(truth.parts.crs)
    if resolution is None:
        crs, resolution = _metric_crs(truth, pred), 1.0
    elif not resolution > 0:
        raise ConfigError(f"resolution must be positive, got {resolution}")
    parts = (truth.parts if len(truth.parts) else pred.parts).to_crs(crs)
    if not len(parts):
        raise RasterInputError(f"{truth.path} and {pred.path} are both empty: no extent to evaluate on")
    west, south, east, north = parts.total_bounds
    if aoi is not None:
        a_west, a_south, a_east, a_north = gpd.GeoSeries([aoi], crs=AOI_CRS).to_crs(crs).total_bounds
        west, south, east, north = max(west, a_west), max(south, a_south), min(east, a_east), min(north, a_north)
        if not (east > west and north > south):
            raise RasterInputError(f"the AOI and {truth.path} do not overlap")
    shape = (max(1, math.ceil((north - south) / resolution)), max(1, math.ceil((east - west) / resolution)))
    transform = from_origin(west, north, resolution, resolution)
    return _Grid(transform, crs, shape, truth.path)


def _describe(grid: _Grid) -> str:
    """``"40 x 40 px at 1 metre (EPSG:32616)"``."""
    units = "degree" if grid.crs.is_geographic else grid.crs.linear_units
    return f"{grid.shape[0]} x {grid.shape[1]} px at {abs(grid.transform.a):g} {units} ({grid.crs})"


def _check_holds(truth: _Raster | _Vector, pred_path: Path, grid: _Grid, instances: np.ndarray,
                 schema: Schema) -> None:
    """Refuse a grid on which fewer than half of the truth's fields lying on it cover a pixel centre
    (a raster truth's: fewer than half as many fields on the grid as in its own pixels under it)."""
    extent = shapely.box(*array_bounds(*grid.shape, grid.transform))
    if isinstance(truth, _Vector):
        if not len(truth.parts):
            return
        on_grid = np.unique(truth.ids[truth.parts.to_crs(grid.crs).intersects(extent).to_numpy()])
        held = np.intersect1d(on_grid, np.unique(instances)).size
    else:
        native = truth.data if truth.kind == "instance" else instances_from_classes(
            schema.check_mask(truth.data, str(truth.path)), schema)
        window = from_bounds(*transform_bounds(grid.crs, truth.crs, *extent.bounds), truth.transform)
        r0, c0 = max(math.floor(window.row_off), 0), max(math.floor(window.col_off), 0)
        under = native[r0:max(math.ceil(window.row_off + window.height), 0),
                       c0:max(math.ceil(window.col_off + window.width), 0)]
        on_grid, held = np.setdiff1d(np.unique(under), [0]), np.setdiff1d(np.unique(instances), [0]).size
    if 2 * held < on_grid.size:
        raise RasterInputError(
            f"{truth.path} against {pred_path}: the grid ({_describe(grid)}) holds {held} of the "
            f"{on_grid.size} truth fields on it: give a finer resolution or --grid-like, or none (default: 1 m)")


def _aoi_mask(aoi, grid: _Grid) -> np.ndarray:
    """Pixels of the grid whose centres lie in the AOI (EPSG:4326)."""
    shape = gpd.GeoSeries([aoi], crs=AOI_CRS).to_crs(grid.crs).iloc[0]
    inside = rasterize([(shape, 1)], grid.shape, transform=grid.transform, dtype=np.uint8).astype(bool)
    if not inside.any():
        raise RasterInputError(f"the AOI holds no pixel of the grid of {grid.source} ({_describe(grid)})")
    return inside


def _check_overlap(path: Path, bounds, grid: _Grid) -> None:
    """Raise unless ``bounds`` (west, south, east, north in the grid CRS) overlap the grid."""
    west, south, east, north = bounds
    g_west, g_south, g_east, g_north = array_bounds(*grid.shape, grid.transform)
    if not (min(east, g_east) > max(west, g_west) and min(north, g_north) > max(south, g_south)):
        raise RasterInputError(f"{path} and {grid.source} do not overlap")


def _on_grid(src: _Raster | _Vector, grid: _Grid, schema: Schema, seed_px: float = 0.0,
             rules: FieldRules | None = None, image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        instances = instances_from_classes(warped, schema, seed_px=seed_px)
        if rules is not None:
            instances = apply_rules(instances, rules, pixel_metres(grid.transform, grid.crs, grid.shape), image=image)
        return warped, instances
    return classes_from_instances(warped, schema), warped


def _coverage(pred: _Raster, grid: _Grid) -> np.ndarray:
    """Grid pixels where the prediction raster holds data."""
    covered = np.zeros(grid.shape, np.uint8)
    reproject(pred.valid.astype(np.uint8), covered, src_transform=pred.transform, src_crs=pred.crs,
              dst_transform=grid.transform, dst_crs=grid.crs, resampling=Resampling.nearest)
    return covered > 0


def load_pair(
    pred_path: str | Path,
    truth_path: str | Path,
    schema: str | Schema,
    pred_kind: str = "auto",
    truth_kind: str = "auto",
    resolution: float | None = None,
    make_valid: bool = False,
    aoi: shapely.Geometry | None = None,
    grid_like: str | Path | None = None,
    seed_px: float = 0.0,
    rules: FieldRules | None = None,
    image: np.ndarray | None = None,
) -> AlignedPair:
    """Read a prediction and its truth onto one grid (see the module docstring for the rules).

    ``pred_kind``/``truth_kind`` (``auto``, ``class``, ``instance``) apply to rasters only;
    ``resolution`` (CRS units per pixel) is used only when both inputs are vectors (default: 1 m,
    see above); ``aoi`` (EPSG:4326) limits the scored pixels; ``grid_like`` names a raster whose
    grid to score on. Raises :class:`RasterInputError` for a missing or unreadable file, an input
    without a CRS, inputs (or an AOI) that do not overlap, invalid or non-polygon geometries, or a
    grid too coarse for a vector truth; :class:`SchemaError` for a class raster with values
    outside the schema; :class:`ConfigError` for a bad kind or resolution. An empty truth is not
    an error (see :attr:`AlignedPair.warnings`). ``make_valid`` repairs invalid polygons instead
    of refusing them. ``seed_px`` is the fields step's core depth for a prediction class raster, ``rules``
its post-processing (:func:`run_field_rules` finds a run's); their edge split needs ``image``, the
    scene's ``H x W x bands`` pixels on the scoring grid: without it the class raster's fields are made
    without the edge split, and a warning says so.
    """
    schema = get_schema(schema)
    truth, pred = _read(truth_path, truth_kind, make_valid), _read(pred_path, pred_kind, make_valid)
    grid = _raster_grid(grid_like) if grid_like is not None else _grid(truth, pred, resolution, aoi)
    truth_classes, truth_instances = _on_grid(truth, grid, schema)
    _check_holds(truth, pred.path, grid, truth_instances, schema)
    warnings = ()
    if rules is not None and rules.edge_quantile and image is None and isinstance(pred, _Raster):
        rules = replace(rules, edge_quantile=0.0)
        warnings = (f"{pred.path}: the fields are made without the run's edge split, which needs the scene "
                    "image (its fields.gpkg holds the run's fields)",)
    pred_classes, pred_instances = _on_grid(pred, grid, schema, seed_px, rules, image)
    scored = np.ones(grid.shape, bool)
    if isinstance(pred, _Raster) and not pred.valid.all():
        scored &= _coverage(pred, grid)
    if aoi is not None:
        scored &= _aoi_mask(aoi, grid)
    for layer in (truth_classes, truth_instances, pred_classes, pred_instances):
        layer[~scored] = 0
    if not truth_instances.any():
        warnings += (f"{truth.path} holds no field on the scored pixels: instance and object scores are "
                    "undefined (null), and every predicted field pixel counts against the map",)
    return AlignedPair(pred_classes, truth_classes, pred_instances, truth_instances, grid.transform, grid.crs,
                       warnings)


def read_image(path: str | Path) -> np.ndarray:
    """Bands 1-3 of a GeoTIFF (band 1 thrice for a 1-band one) as ``H x W x 3``: the scene image an
    edge split reads; :class:`RasterInputError` naming the file when it cannot be read."""
    try:
        with rasterio.open(path) as src:
            bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
            return np.moveaxis(src.read(bands), 0, -1)
    except rasterio.errors.RasterioError as e:
        raise RasterInputError(f"image {path}: cannot be read ({e})") from None


def run_aoi(pred_path: str | Path) -> tuple[shapely.Geometry, str] | None:
    """The AOI (EPSG:4326) and AOI file of the ``map_region`` run that wrote ``pred_path`` (its
    ``fields.gpkg`` or a raster in its ``masks/``), or None if the file lies in no run folder.

    The run's ``summary.json`` names the AOI file and its ``run.json`` holds the AOI's
    fingerprint; a file that is gone or changed since the run raises :class:`RasterInputError`.
    """
    root = _run_folder(pred_path)
    if root is None:
        return None
    hint = "pass the AOI it was mapped with (--aoi)"
    try:
        aoi_path = json.loads((root / "summary.json").read_text())["aoi"]
        expected = json.loads((root / "run.json").read_text())["aoi_sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise RasterInputError(f"{pred_path}: its run folder {root} names no AOI ({e}): {hint}") from None
    try:
        aoi = load_aoi(aoi_path)
    except ConfigError as e:
        raise RasterInputError(f"{pred_path}: the AOI of its run cannot be read ({e}): {hint}") from None
    if aoi_fingerprint(aoi) != expected:
        raise RasterInputError(f"{pred_path}: the AOI file of its run, {aoi_path}, changed since the run: {hint}")
    return aoi, aoi_path


def run_seed_px(pred_path: str | Path) -> float | None:
    """The core depth the ``map_region`` run that wrote ``pred_path`` made its fields with
    (``seed_px`` of its ``summary.json``), or None outside a run folder or for a run that predates
    the setting."""
    root = _run_folder(pred_path)
    if root is None:
        return None
    try:
        return float(json.loads((root / "summary.json").read_text())["seed_px"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_field_rules(pred_path: str | Path) -> FieldRules | None:
    """The field rules the ``map_region`` run that wrote ``pred_path`` made its fields with
    (``field_rules`` of its ``summary.json``), or None outside a run folder or for a run that predates them."""
    root = _run_folder(pred_path)
    if root is None:
        return None
    try:
        return FieldRules(**json.loads((root / "summary.json").read_text())["field_rules"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_folder(pred_path: str | Path) -> Path | None:
    """The ``map_region`` run folder holding ``pred_path`` (its ``fields.gpkg`` or ``masks/``)."""
    path = Path(pred_path).resolve()
    return next((d for d in (path.parent, path.parent.parent) if (d / "run.json").is_file()), None)
