"""STAC as users hold it, for tests: a static catalog written with pystac, and a real STAC API
server on 127.0.0.1 in front of it.

The server is stac-fastapi-static (a stac-fastapi backend over a static catalog: no database), run
by uvicorn in a thread. One adaptation, named here: stac-fastapi.api 5.2 passes Starlette's
``CORSMiddleware`` its arguments by position, which no longer line up with Starlette 1.x's
signature (the app answers 500); the fixture re-declares that middleware with the same settings by
keyword. Nothing else of the server is touched.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pystac
import shapely

from magseg_ray.cluster import LOOPBACK, free_port

COG = pystac.MediaType.COG


def user_item(scene: dict, href: str, collection: str, when: str | None, cloud: float | None,
              bands=("red", "green", "blue"), key: str = "visual", roles=("visual",), media_type=COG) -> pystac.Item:
    """A STAC item like a provider's: the footprint, a time, ``eo:cloud_cover`` and one image asset
    with ``eo:bands`` common names (``scene`` is a catalog row: ``id``, ``geometry``)."""
    props = {} if cloud is None else {"eo:cloud_cover": cloud}
    geometry = scene["geometry"]
    item = pystac.Item(scene["id"], shapely.geometry.mapping(geometry), list(geometry.bounds),
                       dt.datetime.fromisoformat(when) if when else None, props,
                       **({} if when else {"start_datetime": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                                           "end_datetime": dt.datetime(2020, 12, 31, tzinfo=dt.timezone.utc)}))
    item.collection_id = collection
    extra = {"eo:bands": [{"name": f"b{i}", "common_name": c} for i, c in enumerate(bands, 1)]}
    item.add_asset(key, pystac.Asset(href, media_type=media_type, roles=list(roles), extra_fields=extra))
    item.add_asset("thumbnail", pystac.Asset(href.rsplit(".", 1)[0] + ".png", media_type=pystac.MediaType.PNG,
                                             roles=["thumbnail"]))
    return item


def write_catalog(root: Path, collections: dict[str, list[pystac.Item]]) -> Path:
    """``root/catalog.json`` -> one collection per key -> its items, self-contained (relative links)."""
    catalog = pystac.Catalog("imagery", "imagery as a provider publishes it")
    for name, items in collections.items():
        boxes = [i.bbox for i in items]
        extent = pystac.Extent(
            pystac.SpatialExtent([[min(b[0] for b in boxes), min(b[1] for b in boxes),
                                   max(b[2] for b in boxes), max(b[3] for b in boxes)]]),
            pystac.TemporalExtent([[dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), None]]))
        collection = pystac.Collection(name, f"{name} scenes", extent)
        for item in items:
            collection.add_item(item)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def upload_tree(s3, local: Path, bucket: str, prefix: str) -> str:
    """Every file under ``local`` to ``s3://bucket/prefix/<relative path>``; returns that prefix URI."""
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"


class StacApi:
    """stac-fastapi-static serving the static catalog ``catalog_json`` on 127.0.0.1; a context manager."""

    def __init__(self, catalog_json: Path):
        self.catalog_json = Path(catalog_json)
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._server = self._thread = None

    def __enter__(self) -> StacApi:
        import uvicorn
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware
        from stac_fastapi.api.middleware import CORSMiddleware as StacCORSMiddleware
        from stac_fastapi.static.api import Settings, make_api

        app = make_api(Settings(catalog_href=self.catalog_json.resolve().as_uri(), log_level="warning")).app
        app.user_middleware = [Middleware(CORSMiddleware, **m.kwargs) if m.cls is StacCORSMiddleware else m
                               for m in app.user_middleware]
        self._server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the STAC API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
