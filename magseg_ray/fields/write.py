"""Field tables in fiboa columns, written as partitioned GeoParquet 1.1 and one GeoPackage.

Columns: ``id``, ``collection`` (:data:`COLLECTION`), ``geometry`` (EPSG:4326), ``metrics:area``
(m², float32), ``metrics:perimeter`` (m, float32), ``determination:method`` (``auto-imagery``),
``determination:datetime`` (the scene's acquisition time, UTC, milliseconds), then ``class``,
``confidence`` (mean answer confidence over the field's pixels, 0-1), ``scene_id``, ``pixels``
and ``geometry_bbox`` (the GeoParquet 1.1 bbox covering).

Each GeoParquet file is fiboa 0.3 (on Vecorel 0.1): the Parquet metadata ``collection`` names the
collection's schemas (:data:`SCHEMAS`), and the properties those schemas require (``id``,
``collection``, ``geometry``) are non-nullable columns, as ``fiboa validate`` checks
(``tests/fields/test_standards.py`` checks the files by the same rules, and by the GeoParquet 1.1
schema and abstract tests).

Partitions: ``fields/cell=<cell>/<part>.parquet``, where the cell is the ``partition_degrees``
lon/lat square holding the field's centroid (``x104_y12`` is 104-105 E, 12-13 N at 1 degree). A
country-wide map is many files; readers filter by the ``cell`` directory or by the bbox covering
column (GeoParquet 1.1) without reading the rest, and ``geopandas.read_parquet("fields")`` reads
them all.
"""

from __future__ import annotations

import io
import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from magseg_ray.fields.polygons import FIBOA_METHOD, measure
from magseg_ray.run_files import RunFiles

COLUMNS = ["id", "collection", "geometry", "metrics:area", "metrics:perimeter", "determination:method",
           "determination:datetime", "class", "confidence", "scene_id", "pixels"]
COLLECTION = "magseg-ray"
"""The fiboa collection id of every field this project writes."""
SCHEMAS = ["https://vecorel.org/specification/v0.1.0/schema.yaml", "https://fiboa.org/specification/v0.3.0/schema.yaml"]
"""The schemas the fields GeoParquet conforms to (Vecorel core, fiboa core)."""
COVERING = "geometry_bbox"
"""The bbox covering column (GeoParquet 1.1; GDAL's name for it). Not ``bbox``: fiboa's ``bbox``
property must be nullable, while a covering column must repeat as its geometry, which fiboa requires."""
REQUIRED = ("id", "collection", "geometry", COVERING)
"""Non-nullable columns: the properties :data:`SCHEMAS` require, and the geometry's covering."""
TYPES = {"metrics:area": pa.float32(), "metrics:perimeter": pa.float32(),
         "determination:datetime": pa.timestamp("ms", tz="UTC")}
"""Arrow types fiboa 0.3 gives its properties (its ``float`` is 32-bit; timestamps in ms, UTC);
strings are written as Arrow ``string`` (pandas' own would be ``large_string``)."""
CUSTOM = {"class": {"type": "string"}, "confidence": {"type": "double", "minimum": 0, "maximum": 1},
          "scene_id": {"type": "string"}, "pixels": {"type": "int64", "minimum": 1}}
"""Schemas of this project's own columns, in the collection's ``schemas:custom`` (fiboa-cli reads them)."""


def to_fiboa(fields: gpd.GeoDataFrame, ids: list[str], class_name: str, datetimes: dict[str, str | None],
             extra: tuple = ()) -> gpd.GeoDataFrame:
    """``fields`` (``scene_id``, ``confidence``, ``pixels``, geometry in EPSG:4326) in fiboa columns,
    then the ``extra`` columns it has (a ``class`` column of its own, where set, wins over ``class_name``);
    ``datetimes`` maps scene id to its acquisition time (merged fields take their first scene's)."""
    fields = measure(fields)
    first_scene = [s.split("+")[0] for s in fields["scene_id"]]
    fields["id"] = ids
    fields["collection"] = COLLECTION
    fields["determination:method"] = FIBOA_METHOD
    fields["determination:datetime"] = pd.to_datetime([datetimes.get(s) for s in first_scene], utc=True)
    fields["class"] = fields["class"].fillna(class_name) if "class" in fields else class_name
    fields["pixels"] = fields["pixels"].astype("int64")
    return fields[COLUMNS + [c for c in extra if c not in COLUMNS]].reset_index(drop=True)


def cells(fields: gpd.GeoDataFrame, degrees: float) -> np.ndarray:
    """Partition cell name of each field (see module doc)."""
    c = shapely.centroid(fields.geometry.values)
    x = np.floor(shapely.get_x(c) / degrees).astype(int) * degrees
    y = np.floor(shapely.get_y(c) / degrees).astype(int) * degrees
    return np.array([f"x{a:g}_y{b:g}" for a, b in zip(x, y)], dtype=object)


def _parquet(frame: gpd.GeoDataFrame) -> bytes:
    """GeoParquet 1.1 with its bbox covering column, as fiboa 0.3 (see module doc)."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, write_covering_bbox=True, schema_version="1.1.0")
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    metadata = table.schema.metadata
    table = table.rename_columns([COVERING if name == "bbox" else name for name in table.column_names])
    geo = json.loads(metadata[b"geo"])
    geo["columns"]["geometry"]["covering"] = {"bbox": {k: [COVERING, k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    types = [TYPES.get(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type) for f in table.schema]
    schema = pa.schema([f.with_type(t).with_nullable(f.name not in REQUIRED) for f, t in zip(table.schema, types)],
                       metadata={**metadata, b"geo": json.dumps(geo), b"collection": json.dumps(
                           {"schemas": {COLLECTION: SCHEMAS}, "schemas:custom": {"properties": CUSTOM}})})
    out = io.BytesIO()
    pq.write_table(table.cast(schema), out)
    return out.getvalue()


def write_partitions(files: RunFiles, root: str, fields: gpd.GeoDataFrame, part: str, degrees: float) -> list[str]:
    """Write ``fields`` as ``root/cell=<cell>/<part>.parquet`` files; returns their paths."""
    written = []
    if fields.empty:
        return written
    for cell, group in fields.groupby(cells(fields, degrees), sort=True):
        rel = f"{root}/cell={cell}/{part}.parquet"
        files.write(rel, _parquet(group.reset_index(drop=True)))
        written.append(rel)
    return written


def read_fields(files: RunFiles, root: str = "fields") -> gpd.GeoDataFrame:
    """Every partition under ``root`` as one frame (with its ``cell``), sorted by id."""
    parts = []
    for rel in files.listdir(root):
        if rel.endswith(".parquet"):
            frame = gpd.read_parquet(io.BytesIO(files.read(rel)))
            parts.append(frame.assign(cell=rel.split("cell=", 1)[1].split("/", 1)[0]))
    if not parts:
        return gpd.GeoDataFrame({c: [] for c in COLUMNS if c != "geometry"}, geometry=[], crs="EPSG:4326")
    return pd.concat(parts, ignore_index=True).sort_values("id").reset_index(drop=True)


def write_geopackage(files: RunFiles, rel: str, fields: gpd.GeoDataFrame) -> None:
    """All fields as one GeoPackage layer ``fields`` (QGIS opens it directly)."""
    frame = fields.drop(columns=["cell"], errors="ignore").copy()
    frame["determination:datetime"] = frame["determination:datetime"].astype(str)
    empty = {"geometry_type": "Polygon"} if frame.empty else {}  # else GDAL types the empty layer Unknown
    files.write_with(rel, lambda path: frame.to_file(path, layer="fields", driver="GPKG", **empty))
