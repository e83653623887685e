"""The standards' checks of a map's outputs, offline: what ``fiboa validate`` (fiboa-cli 0.21, fiboa
0.3 on Vecorel 0.1), a GeoParquet 1.1 validator and GDAL say of README command 1's files.

- :func:`geoparquet_problems`: the ``geoparquet-validator`` package's abstract tests (core and
  covering classes) and the ``geo`` metadata against the GeoParquet 1.1.0 JSON schema (vendored);
- :func:`fiboa_problems`: the checks of fiboa-cli's GeoParquet validator (``vecorel_cli.validation.
  geoparquet``), on the vendored fiboa and Vecorel schemas: collection metadata in the Parquet header
  naming both schemas, required properties present and non-nullable, every other property with a
  schema nullable, Arrow types as the schemas' types, values within their constraints;
- :func:`geopackage_problems`: GDAL opens the GeoPackage (pyogrio): its layer, SRS and feature
  count; SQLite's integrity check and the GeoPackage ``application_id``.

Each returns a list of problems in the validators' words (empty: valid); ``fiboa_problems`` also
names the properties that have no schema, as fiboa-cli warns.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import referencing
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
VECOREL = "https://vecorel.org/specification/v0.1.0/schema.yaml"
FIBOA = re.compile(r"https://fiboa.org/specification/v([^/]+)/schema.yaml")
LOCAL = {VECOREL: "vecorel-0.1.0.yaml", "https://fiboa.org/specification/v0.3.0/schema.yaml": "fiboa-0.3.0.yaml"}
ARROW = {"float": pa.types.is_float32, "double": pa.types.is_float64, "int64": pa.types.is_int64,
         "string": pa.types.is_string, "array": pa.types.is_list, "date-time": pa.types.is_timestamp,
         "geometry": pa.types.is_binary, "bounding-box": pa.types.is_struct}
"""fiboa-cli's Arrow type check per schema type (``vecorel_cli.parquet.types.PA_TYPE_CHECK``, the types used here)."""


def _projjson() -> referencing.Resource:
    import pyproj

    return referencing.Resource.from_contents(
        json.loads((Path(pyproj.datadir.get_data_dir()) / "projjson.schema.json").read_text()))


def geoparquet_problems(path: Path) -> list[str]:
    import geoparquet_validator

    report = geoparquet_validator.check(str(path))
    problems = [f"{o['id']}: {o['message']}" for o in report["outcomes"] if o["status"] == "fail"]
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    schema = json.loads((SCHEMAS / "geoparquet-1.1.0.schema.json").read_text())
    registry = referencing.Registry().with_resource("https://proj.org/schemas/v0.7/projjson.schema.json", _projjson())
    validator = jsonschema.Draft7Validator(schema, registry=registry)
    return problems + [f"GeoParquet metadata: {list(e.path)}: {e.message}" for e in validator.iter_errors(geo)]


def _merged(uris: list[str]) -> dict:
    merged: dict = {"required": [], "collection": {}, "properties": {}}
    for uri in uris:
        schema = yaml.safe_load((SCHEMAS / LOCAL[uri]).read_text())
        merged["required"] += schema.get("required", [])
        merged["collection"] |= schema.get("collection", {})
        merged["properties"] |= schema.get("properties", {})
    return merged


def _value_problems(name: str, values, rules: dict) -> list[str]:
    """The constraints of a scalar property's schema (fiboa-cli's ``validate_column``), first problem only."""
    keywords = {k: v for k, v in rules.items() if k in ("enum", "minimum", "maximum", "exclusiveMinimum",
                                                       "exclusiveMaximum", "minLength", "pattern")}
    if not keywords or rules["type"] not in ("string", "float", "double", "int64"):
        return []
    validator = jsonschema.Draft7Validator(keywords)
    for value in values:
        if value is None:
            continue
        for error in validator.iter_errors(value):
            return [f"{name}: {error.message}"]
    return []


def fiboa_problems(path: Path, warnings: list | None = None) -> list[str]:
    schema = pq.read_schema(path)
    meta = schema.metadata or {}
    if b"geo" not in meta:
        return ["File does not have GeoParquet metadata"]
    collection = json.loads(meta.get(b"collection", b"{}"))
    if not collection:
        return ["Collection metadata is missing in Parquet header"]
    problems = []
    for cid, uris in collection.get("schemas", {}).items():
        if VECOREL not in uris:
            problems.append(f"Collection '{cid}': Vecorel core schema not found in schemas")
        if not any(FIBOA.search(u) for u in uris):
            problems.append(f"Collection '{cid}': Required schema {FIBOA.pattern} not found")
    if problems or not collection.get("schemas"):
        return problems or ["No schemas provided"]
    uris = sorted({u for v in collection["schemas"].values() for u in v})
    merged = _merged(uris)
    merged["properties"] |= collection.get("schemas:custom", {}).get("properties", {})
    table = pq.read_table(path)
    for key in merged["required"]:
        if key not in schema.names and not merged["collection"].get(key, False):
            problems.append(f"{key}: Required field is missing")
    for key in schema.names:
        rules = merged["properties"].get(key)
        if rules is None:
            (warnings if warnings is not None else []).append(f"{key}: No schema defined")
            continue
        field, nullable = schema.field(key), key not in merged["required"]
        if field.nullable != nullable:
            problems.append(f"{key}: Nullability differs, is {field.nullable} but must be {nullable}")
        check = ARROW.get(rules["type"])
        if check is not None and not check(field.type):
            problems.append(f"{key}: Data type invalid, is {field.type} but must be {rules['type']}")
            continue
        if rules["type"] == "date-time" and field.type.tz != "UTC":
            problems.append(f"{key}: Timestamp timezone invalid, must be UTC")
        problems += _value_problems(key, table.column(key).to_pylist(), rules)
    return problems


def geopackage_problems(path: Path, layer: str, features: int) -> list[str]:
    import pyogrio

    problems = []
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as e:  # pyogrio's DataSourceError / DataLayerError: GDAL cannot open it
        return [f"GDAL cannot open layer {layer!r} of {path}: {e}"]
    if info["crs"] != "EPSG:4326":
        problems.append(f"SRS {info['crs']}, not EPSG:4326")
    if info["features"] != features:
        problems.append(f"{info['features']} features, not {features}")
    if info["geometry_type"] not in ("Polygon", "MultiPolygon"):
        problems.append(f"geometry type {info['geometry_type']}")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        if db.execute("PRAGMA application_id").fetchone()[0] != 0x47504B47:  # 'GPKG'
            problems.append("application_id is not GPKG")
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            problems.append("SQLite integrity check failed")
        row = db.execute("SELECT data_type, srs_id FROM gpkg_contents WHERE table_name = ?", (layer,)).fetchone()
        if row != ("features", 4326):
            problems.append(f"gpkg_contents of {layer!r}: {row}")
    return problems


def map_problems(out: Path, fields: int) -> dict[str, list[str]]:
    """Every standards problem of a ``map_region`` output folder that holds ``fields`` fields (its
    ``summary.json`` says), by file (empty lists: all valid)."""
    parts = sorted((out / "fields").rglob("*.parquet"))
    result = {str(p): geoparquet_problems(p) + fiboa_problems(p) for p in parts}
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    result["fields (all parts)"] = [] if rows == fields else [f"{rows} rows in {len(parts)} parts, not {fields}"]
    result[str(out / "fields.gpkg")] = geopackage_problems(out / "fields.gpkg", "fields", fields)
    return result
