"""AOI -> chip windows: which parts of which scenes a job reads.

An AOI is any vector file geopandas reads (GeoJSON, GeoPackage, GeoParquet, ...) in the CRS it
declares (GeoJSON without one is EPSG:4326, as RFC 7946 says). Each scene the AOI touches is cut
into square chip windows on the scene's own pixel grid (no resampling, so scenes of different CRSs
mix freely): a regular grid with stride ``chip_size - overlap`` anchored at the scene's top-left
pixel, keeping the windows that intersect the part of the AOI the scene owns (where scenes overlap,
one maps each place: :mod:`magseg_ray.scenes.overlap`). A window may run past the scene's right or
bottom edge; the reader pads it (see :mod:`magseg_ray.chips.read`) and marks those pixels invalid.

A polygon that crosses the antimeridian uncut (an edge spanning more than 180 degrees of longitude,
e.g. from 179 to -179) is read the short way across it and cut there into two parts, as RFC 7946
asks writers to do; read as written it would span the globe the long way round.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import shapely.affinity
from pyproj import CRS
from rasterio.transform import Affine
from shapely.geometry import box

from magseg_ray.errors import ConfigError, SceneError
from magseg_ray.scenes.overlap import owned_areas

AOI_CRS = "EPSG:4326"
DEFAULT_OVERLAP_DIVISOR = 8
"""Neighbouring chips share an eighth of their side by default (64 px of a 512 px chip)."""


@dataclass(frozen=True)
class ChipConfig:
    """How scenes are cut into chips."""

    chip_size: int = 512
    """Chip side in scene pixels; a multiple of the patch size."""
    overlap: int = 512 // DEFAULT_OVERLAP_DIVISOR
    """Pixels shared by neighbouring chips (stitching resolves them); ``0 <= overlap < chip_size``."""

    def __post_init__(self) -> None:
        if self.chip_size < 1 or not 0 <= self.overlap < self.chip_size:
            raise ConfigError(f"need chip_size >= 1 and 0 <= overlap < chip_size, got {self.chip_size}, {self.overlap}")

    @property
    def stride(self) -> int:
        return self.chip_size - self.overlap

    @classmethod
    def for_chip_size(cls, chip_size: int, overlap: int = -1) -> ChipConfig:
        """Chips of ``chip_size`` px sharing ``overlap`` px; a negative ``overlap`` takes the default,
        :data:`DEFAULT_OVERLAP_DIVISOR`-th of the chip (what ``map_region`` and the tile server use)."""
        return cls(chip_size, chip_size // DEFAULT_OVERLAP_DIVISOR if overlap < 0 else overlap)


@dataclass(frozen=True)
class ChipTask:
    """One chip window of one scene: everything a reader needs, as plain values (Ray-friendly)."""

    chip_id: str
    """``<scene_id>/<row_off>_<col_off>``: unique and stable across runs (resume key)."""
    scene_id: str
    uri: str
    """Scene image URI (local path, ``file://`` or ``s3://``)."""
    crs: str
    """Scene CRS, e.g. ``EPSG:32648``."""
    row_off: int
    col_off: int
    size: int
    """Window side in pixels (may extend past the scene edge)."""
    transform: tuple[float, ...]
    """Affine transform of the chip window (6 numbers, GDAL order a, b, c, d, e, f)."""
    datetime: str | None = None
    """Scene acquisition time (ISO), if known."""
    bands: tuple[int, ...] = ()
    """1-based bands read as R, G, B, from the catalog (a STAC asset's band names); empty: the reader's rule."""

    def as_dict(self) -> dict:
        return asdict(self)


def load_aoi(path: str | Path) -> shapely.Geometry:
    """The AOI as one valid (multi)polygon in EPSG:4326; clear errors for anything else."""
    try:
        df = gpd.read_file(path)
    except Exception as e:  # pyogrio raises its own DataSourceError subclasses
        raise ConfigError(f"AOI {str(path)!r} cannot be read: {e}") from None
    if df.empty or df.geometry.is_empty.all():
        raise ConfigError(f"AOI {str(path)!r} has no geometry")
    if df.crs is None:
        df = df.set_crs(AOI_CRS)
    invalid = ~df.geometry.is_valid
    if invalid.any():
        i = int(np.flatnonzero(invalid)[0])
        reason = shapely.is_valid_reason(df.geometry.iloc[i])
        raise ConfigError(f"AOI {str(path)!r}: {int(invalid.sum())} invalid geometries, e.g. feature #{i}: {reason}")
    if not df.geom_type.isin(["Polygon", "MultiPolygon"]).all():
        raise ConfigError(f"AOI {str(path)!r} must hold polygons, found {sorted(set(df.geom_type))}")
    if CRS.from_user_input(df.crs).is_geographic:
        minx, miny, maxx, maxy = df.total_bounds
        if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
            raise ConfigError(
                f"AOI {str(path)!r} declares {df.crs.to_string()} but its coordinates "
                f"({minx:.0f}, {miny:.0f}, {maxx:.0f}, {maxy:.0f}) are not longitudes/latitudes: "
                "declare the CRS the coordinates are in"
            )
    return shapely.union_all([_cut_at_antimeridian(g) for g in df.to_crs(AOI_CRS).geometry.values])


def _cut_at_antimeridian(geom: shapely.Geometry) -> shapely.Geometry:
    """``geom`` (EPSG:4326) cut at the antimeridian where an edge crosses it uncut (see the module doc)."""
    if not any(np.abs(np.diff(shapely.get_coordinates(ring)[:, 0])).max() > 180
               for ring in shapely.get_rings(shapely.get_parts(geom))):
        return geom
    east = shapely.transform(geom, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]),
                                                               xy[:, 1]]))
    west = shapely.affinity.translate(east.intersection(box(180, -90, 540, 90)), -360)
    return shapely.union_all([east.intersection(box(-180, -90, 180, 90)), west])


def aoi_fingerprint(aoi: shapely.Geometry) -> str:
    """A short hash of an AOI's geometry (as :func:`load_aoi` returns it), whatever its vertex order."""
    return hashlib.sha256(shapely.normalize(aoi).wkb).hexdigest()[:16]


def chip_windows(scenes: gpd.GeoDataFrame, aoi: shapely.Geometry, config: ChipConfig = ChipConfig()) -> list[ChipTask]:
    """Chip windows of every scene in the catalog frame ``scenes`` that intersect ``aoi`` (EPSG:4326).

    ``scenes`` is a catalog frame (:mod:`magseg_ray.scenes.catalog`): ``id``, ``uri``, ``crs``,
    ``width``, ``height``, ``native_bounds``, ``datetime`` and the EPSG:4326 footprint (``cloud_cover``
    and ``rgb_bands`` where it has them). A scene gets the windows that meet the part of the AOI it
    owns (:func:`~magseg_ray.scenes.overlap.owned_areas`), so overlapping scenes share no chip.
    Raises :class:`SceneError` when the AOI touches no scene.
    """
    hits = scenes[scenes.intersects(aoi)]
    if hits.empty:
        b = shapely.bounds(aoi).round(4).tolist()
        raise SceneError(f"the AOI (bounds {b}) touches none of the {len(scenes)} catalogued scenes")
    owned = owned_areas(hits, aoi)
    tasks: list[ChipTask] = []
    for scene in hits.itertuples():
        if shapely.area(owned[str(scene.id)]) == 0:
            continue
        transform = scene_transform(scene)
        aoi_local = gpd.GeoSeries([owned[str(scene.id)]], crs=AOI_CRS).to_crs(scene.crs).iloc[0]
        size, stride = config.chip_size, config.stride
        rows = range(0, max(scene.height - config.overlap, 1), stride)
        cols = range(0, max(scene.width - config.overlap, 1), stride)
        offsets = [(r, c) for r in rows for c in cols]
        windows = [box(*_window_bounds(transform, r, c, size)) for r, c in offsets]
        keep = shapely.intersects(np.array(windows, dtype=object), aoi_local)
        for (r, c), k in zip(offsets, keep):
            if k:
                t = transform @ Affine.translation(c, r)
                tasks.append(ChipTask(f"{scene.id}/{r}_{c}", scene.id, scene.uri, scene.crs, r, c, size,
                                      tuple(t)[:6], _iso(getattr(scene, "datetime", None)), _rgb(scene)))
    return tasks


def _rgb(scene) -> tuple[int, ...]:
    bands = getattr(scene, "rgb_bands", None)
    return () if bands is None or not len(bands) else tuple(int(b) for b in bands)


def _iso(value) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


def scene_transform(scene) -> Affine:
    """A scene's north-up pixel grid from its native bounds and size."""
    minx, miny, maxx, maxy = scene.native_bounds
    return Affine((maxx - minx) / scene.width, 0, minx, 0, -(maxy - miny) / scene.height, maxy)


def _window_bounds(transform: Affine, row: int, col: int, size: int) -> tuple[float, float, float, float]:
    x0, y0 = transform @ (col, row)
    x1, y1 = transform @ (col + size, row + size)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
