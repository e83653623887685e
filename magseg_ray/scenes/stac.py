"""Scene catalogs from STAC, as users' imagery comes: static catalogs, STAC APIs, stac-geoparquet.

:func:`load_stac` turns STAC items into the rows of a scene catalog (:mod:`magseg_ray.scenes.catalog`),
so every job plans from them as from the project's own GeoParquet index. Sources (:func:`is_stac`):

- a **static catalog or collection**: a ``catalog.json``, ``collection.json`` or item (any ``.json``),
  local, ``file://``, ``s3://`` or ``http(s)://``; its ``child`` and ``item`` links are followed;
- a **STAC API**: an ``http(s)://`` URL, its ``/search`` endpoint or its landing page, searched
  (ItemSearch: bbox, datetime, collections, CQL2 filter) page by page through ``next`` links;
- **stac-geoparquet**: a ``.parquet`` file of STAC items (it has an ``assets`` column).

Selection (:class:`StacSelect`, each a job flag): ``--collection``, ``--datetime``, ``--query``
(CQL2 text such as ``eo:cloud_cover<20``, or CQL2 JSON), and the AOI's bounding box. A search sends
them to the server (the query as a CQL2 filter); every item, whatever its source, is checked
against them here too, so a static catalog or a server without the Filter extension selects alike.

Per item: the image is the asset ``--asset`` names (key, else first asset with that role), by
default the first GeoTIFF asset (``image/tiff`` type, or a ``.tif`` href) with role ``data`` or
``visual``; red, green and blue are the bands whose ``eo:bands`` / ``bands`` / ``raster:bands``
common names say so (else the reader's rule). The scene's grid comes from the image's own header
(a few ranged reads, as for a folder); its time from the item's ``datetime`` (else
``start_datetime``), its cloud from ``eo:cloud_cover``; assets ``labels`` and ``fields`` are its
sidecars. Scene id: the item id (``/`` becomes ``_``). Asset hrefs: ``s3://``, ``http(s)://`` (read
in place by range requests), ``file://`` or local paths; relative ones resolve against the item.

Bad items do not stop a run: an item with no image asset, an image that cannot be read (404, not a
GeoTIFF), a link to a file that is not STAC JSON are :attr:`Catalog.failures` naming the item or
link (footprint: the item's geometry, or unknown); a link back to a catalog already read (a cycle)
is a failure with an empty footprint (nothing is lost). A source that is itself unreadable or not
STAC, or a selection that matches no item, raises :class:`SceneError`.

:func:`write_stac` writes a catalog's scenes as a static STAC collection (``build_catalog --stac``)
that :func:`load_stac` reads back to the same scenes.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pystac
import shapely
from pystac.utils import make_absolute_href

from magseg_ray.errors import SceneError
from magseg_ray.files import write_atomic
from magseg_ray.scenes.select import StacSelect
from magseg_ray.scenes.store import ObjectStore, SceneFiles, split_uri

IMAGE_ROLES = ("data", "visual")
"""Roles of the asset taken as the image when ``--asset`` is not given."""
SIDECAR_ASSETS = {"labels_uri": "labels", "fields_uri": "fields"}
"""Catalog column -> the asset key holding that sidecar."""
UNKNOWN_START = "0001-01-01T00:00:00Z"
"""``start_datetime`` written for a scene of unknown time (STAC needs one), read back as unknown."""
NOTHING_LOST = shapely.Polygon()
"""Footprint of a failure that loses no scene (a link back to a catalog already read)."""
SEARCH_PAGE = 100
"""Items asked for per page of a STAC API search (the server may send fewer; ``next`` links go on)."""
EXTENSIONS = ["https://stac-extensions.github.io/projection/v2.0.0/schema.json",
              "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
              "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]
"""Extensions of the items :func:`write_stac` writes (``proj:``, ``eo:bands``, ``raster:bands``)."""


def is_stac(uri: str) -> bool:
    """Whether ``uri`` names a STAC source (stac-geoparquet is told apart only once read)."""
    return urlsplit(uri).scheme in ("http", "https") or uri.lower().endswith(".json")


class StoreIO(pystac.StacIO):
    """pystac reads and writes through an :class:`ObjectStore` (local, ``file://``, ``s3://``) and
    reads ``http(s)://`` with pystac's own client; every failure is a :class:`SceneError` naming the href."""

    def __init__(self, store: ObjectStore):
        super().__init__()
        self.store, self.web = store, pystac.StacIO.default()

    def read_text(self, source, *args, **kwargs) -> str:
        href = str(source)
        try:
            if urlsplit(href).scheme in ("http", "https"):
                return self.web.read_text(href)
            return self.store.filesystem(href).cat_file(split_uri(href)[1]).decode()
        except Exception as e:  # urllib, s3fs and botocore raise many types
            raise SceneError(f"{href}: cannot read: {e}") from None

    def write_text(self, dest, txt: str, *args, **kwargs) -> None:
        href = str(dest)
        scheme, path = split_uri(href)
        try:
            if scheme == "s3":
                self.store.filesystem(href).pipe_file(path, txt.encode())
            else:
                write_atomic(path, txt)
        except OSError as e:
            raise SceneError(f"{href}: cannot write: {e}") from None


def _stac_json(href: str, stac_io: StoreIO) -> dict:
    """The STAC object at ``href``; :class:`SceneError` if unreadable, not JSON or not STAC."""
    text = stac_io.read_text(href)
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise SceneError(f"{href}: not JSON ({e}): name a STAC catalog.json, collection.json or item") from None
    obj = obj if isinstance(obj, dict) else {}
    kind, version = obj.get("type"), obj.get("stac_version")
    if kind not in ("Catalog", "Collection", "Feature", "FeatureCollection") or (
            kind != "FeatureCollection" and version is None):
        raise SceneError(f"{href}: not STAC JSON (type {kind!r}, stac_version {version!r}): "
                         "name a STAC catalog.json, collection.json or item")
    return obj


def _walk(href: str, stac_io: StoreIO) -> tuple[list[tuple[str, dict]], list[tuple]]:
    """Every item under the static STAC object at ``href`` (with the href its links resolve
    against) and the links that could not be followed, as failure rows."""
    queue, seen = deque([(href, _stac_json(href, stac_io))]), {href}
    items, failures = [], []
    while queue:
        at, obj = queue.popleft()
        if obj["type"] == "Feature":
            items.append((at, obj))
            continue
        if obj["type"] == "FeatureCollection":
            items += [(at, f) for f in obj.get("features", [])]
            continue
        for link in obj.get("links", []):
            if link.get("rel") not in ("child", "item"):
                continue
            target = make_absolute_href(link["href"], at)
            if target in seen:
                failures.append((target, f"catalog cycle: {at} links back to {target}, already read", NOTHING_LOST))
                continue
            seen.add(target)
            try:
                queue.append((target, _stac_json(target, stac_io)))
            except SceneError as e:
                failures.append((target, f"linked from {at}: {e}", None))
    return items, failures


def _search(url: str, select: StacSelect, bbox) -> list[tuple[str, dict]]:
    """The items a STAC API returns for the selection, every page (``next`` links)."""
    import pystac_client

    args = {"bbox": list(bbox) if bbox is not None else None, "collections": select.collections() or None,
            "datetime": select.datetime or None, "limit": SEARCH_PAGE}
    if (query := select.cql2()) is not None:
        args |= {"filter": query, "filter_lang": "cql2-json"}
    try:
        if urlsplit(url).path.rstrip("/").endswith("/search"):
            search = pystac_client.ItemSearch(url, **args)
        else:
            search = pystac_client.Client.open(url).search(**args)
        return [(url, item) for item in search.items_as_dicts()]
    except Exception as e:  # pystac-client's APIError, requests' and the JSON parser's errors
        raise SceneError(f"{url}: STAC search failed: {type(e).__name__}: {e}") from None


def _geoparquet_items(uri: str, table) -> list[tuple[str, dict]]:
    """The items of a stac-geoparquet table (hrefs relative to the file's folder)."""
    from stac_geoparquet.arrow import stac_table_to_items

    base = posixpath.dirname(uri.rstrip("/")) + "/"
    try:
        return [(base, item) for item in stac_table_to_items(table)]
    except Exception as e:  # pyarrow and stac-geoparquet raise many types on a malformed table
        raise SceneError(f"{uri}: not stac-geoparquet: {e}") from None


def is_stac_table(table) -> bool:
    """Whether a GeoParquet table holds STAC items (stac-geoparquet) rather than catalog rows."""
    return {"assets", "stac_version"} <= set(table.column_names)


def _selected(item: dict, select: StacSelect, box, start, end, query) -> bool:
    """Whether an item meets the selection (collections, interval, CQL2 query, AOI box)."""
    import cql2

    props = item.get("properties") or {}
    if select.collections() and item.get("collection") not in select.collections():
        return False
    when = _when(item)
    if (start is not None or end is not None) and (when is None or (start is not None and when < start)
                                                   or (end is not None and when > end)):
        return False
    if box is not None and item.get("geometry") and not shapely.geometry.shape(item["geometry"]).intersects(box):
        return False
    if query is None:
        return True
    try:
        return cql2.Expr(query).matches({**item, "properties": props})
    except Exception:  # cql2 raises a bare Exception when a property is missing: no match, as in SQL
        return False


def _when(item: dict) -> pd.Timestamp | None:
    """The item's time (``datetime``, else ``start_datetime``) in UTC, ``None`` if it has none."""
    props = item.get("properties") or {}
    value = props.get("datetime") or props.get("start_datetime")
    return None if value in (None, UNKNOWN_START) else pd.to_datetime(value, utc=True)


def _image_asset(item: pystac.Item, wanted: str) -> pystac.Asset:
    """The item's image asset (see the module doc); :class:`SceneError` saying what it has if none."""
    assets = item.assets
    if wanted:
        found = assets.get(wanted) or next((a for a in assets.values() if wanted in (a.roles or [])), None)
        if found is None:
            raise SceneError(f"no asset {wanted!r} by key or role (it has {', '.join(assets) or 'none'})")
        return found
    for asset in assets.values():
        kind = (asset.media_type or "").lower()
        tiff = "image/tiff" in kind or (not kind and asset.href.lower().endswith((".tif", ".tiff")))
        if tiff and set(asset.roles or []) & set(IMAGE_ROLES):
            return asset
    have = ", ".join(f"{k} ({a.media_type or 'no type'}; roles {a.roles or []})" for k, a in assets.items())
    raise SceneError(f"no GeoTIFF asset with role data or visual (it has {have or 'no assets'}): name one with --asset")


def _rgb_bands(item: pystac.Item, asset: pystac.Asset) -> list[int] | None:
    """1-based red, green, blue bands of the asset by their common names, ``None`` if not all named."""
    for key in ("eo:bands", "bands", "raster:bands"):
        bands = asset.extra_fields.get(key) or (item.properties.get(key) if key != "raster:bands" else None)
        if not bands:
            continue
        names = [b.get("common_name") or b.get("eo:common_name") for b in bands]
        if all(c in names for c in ("red", "green", "blue")):
            return [names.index(c) + 1 for c in ("red", "green", "blue")]
    return None


def _scene(at: str, obj: dict, select: StacSelect) -> tuple[SceneFiles, dict]:
    """The scene files of an item and the catalog values STAC gives (time, cloud, bands)."""
    item = pystac.Item.from_dict(obj, href=None, migrate=False, preserve_dict=True)
    item.set_self_href(None)
    base = at if at.endswith("/") else posixpath.dirname(at) + "/"
    absolute = lambda a: _local(make_absolute_href(a.href, base + "item.json"))  # noqa: E731
    asset = _image_asset(item, select.asset)
    sidecars = {col: absolute(item.assets[key]) if key in item.assets else None for col, key in SIDECAR_ASSETS.items()}
    files = SceneFiles(id=item.id.replace("/", "_"), uri=absolute(asset), **sidecars)
    cloud = item.properties.get("eo:cloud_cover")
    return files, {"datetime": _when(obj), "cloud_cover": float(cloud) if cloud is not None else None,
                   "rgb_bands": _rgb_bands(item, asset)}


def _local(href: str) -> str:
    """An asset href as the catalog holds URIs: a ``file://`` URI as its absolute path."""
    return split_uri(href)[1] if href.startswith("file://") else href


def _href(uri: str) -> str:
    """A catalog URI as an asset href: a local path as a ``file://`` URI (stays absolute on S3)."""
    return uri if urlsplit(uri).scheme else Path(uri).as_uri()


def _footprint(obj: dict):
    try:
        return shapely.geometry.shape(obj["geometry"]) if obj.get("geometry") else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _items(uri: str, select: StacSelect, bbox, store: ObjectStore, table=None) -> tuple[list, list]:
    """``(items, failures)`` of a source: its items (with the href each resolves against) and the
    links that could not be followed."""
    if table is not None:
        return _geoparquet_items(uri, table), []
    if urlsplit(uri).scheme in ("http", "https") and not uri.lower().endswith(".json"):
        return _search(uri, select, bbox), []
    return _walk(uri if urlsplit(uri).scheme else os.path.abspath(uri), StoreIO(store))


def _rows(items: list[tuple[str, dict]], select: StacSelect, store: ObjectStore) -> tuple[list[dict], list[tuple]]:
    """Catalog rows of the items' scenes (grids from their images' headers) and failure rows."""
    from magseg_ray.scenes.catalog import describe_scene

    rows, failures, seen = [], [], {}
    with store.rasterio_env():
        for at, obj in items:
            label = f"STAC item {obj.get('id')!r} ({at})"
            try:
                files, values = _scene(at, obj, select)
                label = f"STAC item {obj.get('id')!r} ({files.uri})"
                if files.id in seen:
                    raise SceneError(f"duplicate scene id {files.id!r} (also {seen[files.id]})")
                row = describe_scene(files, store)
                if problem := row.pop("problem"):
                    raise SceneError(problem)
            except SceneError as e:
                failures.append((label, str(e), _footprint(obj)))
                continue
            rows.append(row | {k: v for k, v in values.items() if v is not None})
            seen[files.id] = files.uri
    return rows, failures


def load_stac(uri: str, store: ObjectStore | None = None, select: StacSelect = StacSelect(), bbox=None,
              table=None):
    """The scene catalog (:class:`~magseg_ray.scenes.catalog.Catalog`) of a STAC source (see the
    module doc), its items selected by ``select`` and ``bbox`` (``[west, south, east, north]``,
    EPSG:4326; ``None``: anywhere); ``table``: the source's stac-geoparquet table, already read."""
    from magseg_ray.scenes.catalog import FAILURE_COLUMNS, Catalog, catalog_frame

    store = store or ObjectStore.from_env()
    query, (start, end) = select.cql2(), select.interval()
    box = shapely.box(*bbox) if bbox is not None else None
    found, failures = _items(uri, select, bbox, store, table)
    chosen = [(at, obj) for at, obj in found if _selected(obj, select, box, start, end, query)]
    if not chosen:
        asked = {"collections": select.collection, "datetime": select.datetime, "query": select.query,
                 "bbox": None if bbox is None else [round(v, 5) for v in bbox]}
        asked = ", ".join(f"{k} {v}" for k, v in asked.items() if v)
        raise SceneError(f"{uri}: no STAC item matches ({asked or 'no selection'}; {len(found)} items read)")
    rows, lost = _rows(chosen, select, store)
    failures += lost
    if not rows:
        raise SceneError(f"{uri}: none of the {len(chosen)} STAC items selected could be catalogued, "
                         f"e.g. {failures[-1][0]}: {failures[-1][1]}")
    rows.sort(key=lambda r: r["id"])
    return Catalog(catalog_frame(rows), pd.DataFrame(failures, columns=FAILURE_COLUMNS))


def _item(row: dict) -> pystac.Item:
    """A catalog row as a STAC item: its image (and sidecars) as assets, grid in ``proj:``."""
    when = None if pd.isna(row["datetime"]) else pd.Timestamp(row["datetime"]).to_pydatetime()
    props = {"gsd": float(row["gsd"]), "proj:code": row["crs"], "proj:shape": [int(row["height"]), int(row["width"])],
             "proj:bbox": [float(v) for v in row["native_bounds"]]}
    if when is None:  # STAC needs a time: an unknown one is "some time before it was catalogued"
        props |= {"start_datetime": UNKNOWN_START, "end_datetime": pd.Timestamp.now("UTC").isoformat()}
    if row.get("cloud_cover") is not None and not pd.isna(row["cloud_cover"]):
        props["eo:cloud_cover"] = float(row["cloud_cover"])
    geometry = row["geometry"]
    item = pystac.Item(row["id"], shapely.geometry.mapping(geometry), list(geometry.bounds), when, props,
                       stac_extensions=list(EXTENSIONS))
    raster = {"data_type": row["dtype"]} | ({} if pd.isna(row["nodata"]) else {"nodata": float(row["nodata"])})
    extra = {"raster:bands": [dict(raster) for _ in range(int(row["bands"]))]}
    if row.get("rgb_bands"):
        names = {int(b): c for b, c in zip(row["rgb_bands"], ("red", "green", "blue"))}
        extra["eo:bands"] = [{"name": f"b{i}", **({"common_name": names[i]} if i in names else {})}
                             for i in range(1, int(row["bands"]) + 1)]
    kind = pystac.MediaType.COG if row["is_cog"] else pystac.MediaType.GEOTIFF
    item.add_asset("image", pystac.Asset(_href(row["uri"]), media_type=kind, roles=["data"], extra_fields=extra))
    if row.get("labels_uri"):
        item.add_asset("labels", pystac.Asset(_href(row["labels_uri"]), media_type=pystac.MediaType.GEOTIFF, roles=["labels"]))
    if row.get("fields_uri"):
        item.add_asset("fields", pystac.Asset(_href(row["fields_uri"]), media_type="application/geopackage+sqlite3",
                                              roles=["labels"]))
    return item


def write_stac(scenes, out: str, store: ObjectStore | None = None, collection_id: str = "scenes") -> str:
    """Write the catalog frame ``scenes`` as a static, self-contained STAC collection under ``out``
    (a folder or ``s3://`` prefix): ``out/collection.json`` and ``out/<id>/<id>.json`` per scene,
    assets at the scenes' own URIs. Returns the collection's href, which :func:`load_stac` reads."""
    root = out.rstrip("/")
    if split_uri(root)[0] == "file":
        root = split_uri(root)[1]
    dated = scenes["datetime"].dropna()
    span = [[dated.min().to_pydatetime(), dated.max().to_pydatetime()] if len(dated) else [None, None]]
    collection = pystac.Collection(
        collection_id, f"{len(scenes)} scenes catalogued by magseg-ray (build_catalog --stac)",
        pystac.Extent(pystac.SpatialExtent([[float(v) for v in scenes.total_bounds]]), pystac.TemporalExtent(span)))
    for row in scenes.to_dict("records"):
        collection.add_item(_item(row))
    collection.normalize_hrefs(root)
    collection.save(pystac.CatalogType.SELF_CONTAINED, stac_io=StoreIO(store or ObjectStore.from_env()))
    return f"{root}/collection.json"
