"""The scene catalog: one row per scene, the index that jobs plan their work from.

Format: a GeoParquet 1.1 file (geopandas ``to_parquet(write_covering_bbox=True)``). One columnar
file reads in one request from S3, filters by column or bounding box (the ``bbox`` covering
column lets readers skip row groups), and loads straight into geopandas, pyarrow, DuckDB or Ray
Data; a STAC catalog would take one JSON request per scene. Footprints are stored in EPSG:4326 so
that scenes from several UTM zones share one index; each scene's exact grid stays in ``crs`` and
``native_bounds``. Columns:

================= ==================================================================================
``id``            scene id (image file name without ``.tif``), unique within a catalog
``uri``           the image: ``s3://bucket/key``, or an absolute path for a local root
``crs``           the scene's CRS, e.g. ``"EPSG:32616"``
``native_bounds`` ``[west, south, east, north]`` in the scene's CRS
``width``         pixels
``height``        pixels
``gsd``           ground sample distance in metres (mean pixel size; from degrees at 111.32 km/°)
``bands``         band count
``dtype``         pixel type of all bands: ``uint8`` or ``uint16``, the only ones supported
``nodata``        nodata value, null if none
``datetime``      acquisition time (UTC; naive times taken as UTC) from the TIFF tag
                  ``ACQUISITION_DATETIME`` (ISO 8601), else ``TIFFTAG_DATETIME``
                  (``YYYY:MM:DD HH:MM:SS``), else null; an unparsable tag counts as absent
``labels_uri``    ``<id>.labels.tif`` beside the image, null if absent
``fields_uri``    ``<id>.fields.gpkg`` beside the image, null if absent
``is_cog``        GDAL reports the COG layout, or the file is tiled with overviews; a plain
                  GeoTIFF is still catalogued, with ``False``. A file whose last full-resolution
                  tile cannot be read (cut short, damaged) is not catalogued at all
``cloud_cover``   percent of the scene under cloud (STAC ``eo:cloud_cover``), null if unknown
``rgb_bands``     1-based bands that are red, green, blue (from a STAC asset's band names), null:
                  the reader's rule (bands 1-3)
``geometry``      footprint polygon in EPSG:4326 (the native bounds, edges densified)
================= ==================================================================================

``cloud_cover`` and ``rgb_bands`` came later: a catalog saved without them loads with them null.
Where scenes overlap, the rule of :mod:`magseg_ray.scenes.overlap` says which maps each place.
The catalog can also come from STAC (:mod:`magseg_ray.scenes.stac`): :func:`load_catalog` takes a
static catalog or collection, a STAC API or stac-geoparquet as well.

Cataloguing reads each image's header and its last full-resolution tile (the one a truncated file
loses first): over S3, a few ranged requests per scene, never the whole image.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Literal

import geopandas as gpd
import pandas as pd
import rasterio
import shapely
from rasterio.warp import transform_geom
from rasterio.windows import Window

from magseg_ray.errors import ConfigError, SceneError
from magseg_ray.files import write_atomic
from magseg_ray.scenes.store import ObjectStore, SceneFiles, list_cogs, split_uri

COLUMNS = (
    *("id", "uri", "crs", "native_bounds", "width", "height", "gsd", "bands", "dtype", "nodata"),
    *("datetime", "labels_uri", "fields_uri", "is_cog", "cloud_cover", "rgb_bands", "geometry"),
)
"""The catalog's columns, in order (see the module docstring)."""
LATER_COLUMNS = ("cloud_cover", "rgb_bands")
"""Columns a catalog saved before them lacks: loaded as null."""
SUPPORTED_DTYPES = ("uint8", "uint16")
"""Pixel types of scenes that can be catalogued: 8-bit imagery and 16-bit (e.g. 12-bit sensor) imagery."""
DATETIME_TAGS = (("ACQUISITION_DATETIME", "ISO8601"), ("TIFFTAG_DATETIME", "%Y:%m:%d %H:%M:%S"))
"""TIFF tags holding the acquisition time, in order of preference, with their formats."""
METRES_PER_DEGREE = 111_320.0
"""Metres per degree of latitude, for the GSD of a scene in a geographic CRS."""
FAILURE_COLUMNS = ["uri", "reason", "footprint"]
"""Columns of :attr:`Catalog.failures`: ``footprint`` (EPSG:4326) where the header could be read, else
``None``, so a job can tell whether a lost scene lay in its area."""


@dataclass(frozen=True)
class Catalog:
    """The catalogued scenes, and the files under the root that could not be catalogued."""

    scenes: gpd.GeoDataFrame
    """One row per scene, :data:`COLUMNS`, footprints in EPSG:4326, sorted by ``uri``."""
    failures: pd.DataFrame
    """One row per file left out, :data:`FAILURE_COLUMNS`. Not saved: a loaded file has none."""

    def save(self, uri: str | os.PathLike, store: ObjectStore | None = None) -> str:
        """Write :attr:`scenes` as GeoParquet to a local path, ``file://`` or ``s3://`` URI; return it.

        A local file is replaced atomically (temporary file, then rename); an S3 object is put whole.
        """
        buf = io.BytesIO()
        self.scenes.to_parquet(buf, index=False, write_covering_bbox=True)
        scheme, path = split_uri(uri)
        try:
            if scheme == "s3":
                (store or ObjectStore.from_env()).filesystem(uri).pipe_file(path, buf.getvalue())
            else:
                write_atomic(path, buf.getvalue())
        except OSError as e:
            raise SceneError(f"{os.fspath(uri)}: cannot write catalog: {e}") from None
        return os.fspath(uri)


def _acquired(tags: dict[str, str]) -> pd.Timestamp | None:
    """The acquisition time from the first parsable tag of :data:`DATETIME_TAGS`, else ``None``."""
    for tag, fmt in DATETIME_TAGS:
        try:
            return pd.to_datetime(tags[tag].strip(), format=fmt, utc=True)
        except (KeyError, ValueError):
            continue
    return None


def describe_scene(files: SceneFiles, store: ObjectStore) -> dict:
    """One catalog row for a scene, from its header; :class:`SceneError` (the reason) if unusable.
    A scene whose header reads but whose last tile does not gets the reason in ``"problem"``
    (``None`` for a good scene), beside its footprint."""
    try:
        with rasterio.open(store.gdal_path(files.uri), driver="GTiff") as src:
            dtype = "/".join(sorted(set(src.dtypes)))
            if dtype not in SUPPORTED_DTYPES:
                raise SceneError(f"unsupported dtype {dtype} (supported: {', '.join(SUPPORTED_DTYPES)})")
            if src.crs is None:
                raise SceneError("no CRS")
            crs, bounds, res = src.crs, list(src.bounds), src.res
            layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
            is_cog = layout == "COG" or (bool(src.profile.get("tiled")) and bool(src.overviews(1)))
            row = {"width": src.width, "height": src.height, "bands": src.count, "dtype": dtype}
            row |= {"nodata": src.nodata, "datetime": _acquired(src.tags()), "is_cog": is_cog}
            row["problem"] = _last_tile_problem(src)
    except rasterio.errors.RasterioError as e:
        raise SceneError(f"not a readable GeoTIFF: {e}") from None
    unit = METRES_PER_DEGREE if crs.is_geographic else crs.linear_units_factor[1]
    outline = shapely.segmentize(shapely.box(*bounds), min(bounds[2] - bounds[0], bounds[3] - bounds[1]) / 16)
    footprint = shapely.geometry.shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(outline)))
    row |= {"id": files.id, "uri": files.uri, "labels_uri": files.labels_uri, "fields_uri": files.fields_uri}
    row |= {"crs": crs.to_string(), "native_bounds": bounds, "gsd": (abs(res[0]) + abs(res[1])) / 2 * unit}
    return row | {"geometry": footprint}


def _last_tile_problem(src) -> str | None:
    """Read the last pixel of the full-resolution level, i.e. its last tile (or strip): a COG stores
    that level after its overviews, so a file cut short loses it first, and the header alone still
    reads as a good COG. One ranged read of one tile; the reason if it fails, else ``None``."""
    try:
        src.read(window=Window(src.width - 1, src.height - 1, 1, 1))
    except rasterio.errors.RasterioError as e:
        return f"truncated or damaged: the last tile of the full-resolution level cannot be read: {e}"
    return None


def catalog_frame(rows: list[dict]) -> gpd.GeoDataFrame:
    """The catalog frame of scene rows, with stable column types."""
    scenes = gpd.GeoDataFrame(pd.DataFrame(rows, columns=list(COLUMNS)), geometry="geometry", crs="EPSG:4326")
    scenes["nodata"] = scenes["nodata"].astype(float)
    scenes["datetime"] = pd.to_datetime(scenes["datetime"], utc=True).dt.as_unit("us")
    scenes["cloud_cover"] = scenes["cloud_cover"].astype(float)
    scenes["rgb_bands"] = scenes["rgb_bands"].astype(object).map(_band_list)
    return scenes


def _band_list(bands) -> list[int] | None:
    """A ``rgb_bands`` value as a list of ints, ``None`` when absent (null, NaN)."""
    return None if bands is None or pd.api.types.is_scalar(bands) else [int(v) for v in bands]


def build_catalog(
    root: str | os.PathLike, store: ObjectStore | None = None, on_error: Literal["record", "raise"] = "record"
) -> Catalog:
    """Catalog the scenes under ``root`` (a local folder, ``file://`` URI or ``s3://`` prefix).

    A scene that cannot be catalogued (not a GeoTIFF, corrupt, unsupported dtype, no CRS, an id
    already seen) is recorded in :attr:`Catalog.failures` and the rest go on, or, with
    ``on_error="raise"``, raises :class:`SceneError` naming the file. A root with no scene, or with
    no scene that could be catalogued, raises :class:`SceneError`. ``store`` defaults to
    :meth:`ObjectStore.from_env`.
    """
    if on_error not in ("record", "raise"):
        raise ConfigError(f"on_error must be 'record' or 'raise', not {on_error!r}")
    store = store or ObjectStore.from_env()
    found = list_cogs(root, store)
    if not found:
        raise SceneError(f"no COG scenes under {os.fspath(root)}")
    rows, failures, seen = [], [], {}
    # the objects as they are now, not as GDAL's cache of an earlier look in this process has them
    with store.rasterio_env(CPL_VSIL_CURL_NON_CACHED=store.gdal_path(root)):
        for files in found:
            footprint = None
            try:
                if files.id in seen:
                     raise SceneError(f"duplicate scene id {files.id!r} (also {seen[files.id]})")
                row = describe_scene(files, store)
                if problem := row.pop("problem"):
                    footprint = row["geometry"]
                    raise SceneError(problem)
                rows.append(row)
                seen[files.id] = files.uri
            except SceneError as e:
                if on_error == "raise":
                     raise SceneError(f"{files.uri}: {e}") from None
                failures.append((files.uri, str(e), footprint))
    if not rows:
        uri, reason, _ = failures[0]
        raise SceneError(
            f"no readable COG scenes under {os.fspath(root)}: {len(failures)} failed, e.g. {uri}: {reason}"
        )
    return Catalog(catalog_frame(rows), pd.DataFrame(failures, columns=FAILURE_COLUMNS))


def load_catalog(uri_or_root: str | os.PathLike, store: ObjectStore | None = None, select=None,
                 bbox: tuple[float, float, float, float] | None = None) -> Catalog:
    """The scenes a job's ``--catalog`` names, the one place a catalog string is resolved:

    - a saved catalog (a ``.parquet`` file of :data:`COLUMNS`: local, ``file://`` or ``s3://``);
    - STAC (:mod:`magseg_ray.scenes.stac`): a static ``catalog.json`` / ``collection.json``, a STAC
      API URL, or a stac-geoparquet ``.parquet``, its items chosen by ``select``
      (:class:`~magseg_ray.scenes.stac.StacSelect`) and ``bbox`` (EPSG:4326; the AOI's bounds);
    - else a root (folder, ``file://`` or ``s3://`` prefix) to catalog now with :func:`build_catalog`
      (failures recorded, not raised).

    ``select`` set on a source that is not STAC is refused (:class:`ConfigError`).
    """
    from magseg_ray.scenes.select import StacSelect
    from magseg_ray.scenes.stac import is_stac, is_stac_table, load_stac

    uri = os.fspath(uri_or_root)
    select = select or StacSelect()
    if is_stac(uri):
        return load_stac(uri, store, select, bbox)
    store = store or ObjectStore.from_env()
    table = _read_parquet(uri, store) if uri.lower().endswith(".parquet") else None
    if table is not None and is_stac_table(table):
        return load_stac(uri, store, select, bbox, table)
    if select != StacSelect():
        raise ConfigError(f"--catalog {uri}: --collection, --datetime, --query and --asset choose STAC items; "
                          "this catalog is not STAC")
    if table is None:
        return build_catalog(uri, store)
    try:
        scenes = gpd.GeoDataFrame.from_arrow(table)
    except Exception as e:  # geopandas raises many types for a table that is not GeoParquet
        raise SceneError(f"{uri}: not a GeoParquet file: {e}") from None
    for column in LATER_COLUMNS:
        if column not in scenes.columns:
            scenes[column] = None
    missing = [c for c in COLUMNS if c not in scenes.columns]
    if missing:
        raise SceneError(f"{uri}: not a scene catalog (no column {', '.join(missing)})")
    scenes = scenes[list(COLUMNS)]
    scenes["native_bounds"] = scenes["native_bounds"].map(lambda b: [float(v) for v in b])
    scenes["rgb_bands"] = scenes["rgb_bands"].astype(object).map(_band_list)
    scenes["cloud_cover"] = scenes["cloud_cover"].astype(float)
    return Catalog(scenes, pd.DataFrame(columns=FAILURE_COLUMNS))


def _read_parquet(uri: str, store: ObjectStore):
    """The Parquet file at ``uri`` as a pyarrow table; :class:`SceneError` if unreadable or not Parquet."""
    import pyarrow.parquet as pq

    try:
        data = store.filesystem(uri).cat_file(split_uri(uri)[1])
    except OSError as e:
        raise SceneError(f"{uri}: cannot read catalog: {e}") from None
    try:
        return pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises many types for a file that is not Parquet
        raise SceneError(f"{uri}: not a GeoParquet file: {e}") from None
