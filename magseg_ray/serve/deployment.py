"""The tile server: one Ray Serve deployment (FastAPI ingress) that maps tiles on demand.

Routes (TiTiler-style URLs, WebMercatorQuad z/x/y, see :mod:`magseg_ray.serve.tiles`):

================================= =================================================================
``GET /tiles/{z}/{x}/{y}.png``    predicted classes, a transparent overlay in the schema's colours
``GET /tiles/{z}/{x}/{y}.geojson`` field polygons in the tile (EPSG:4326), clipped to it
``GET /imagery/{z}/{x}/{y}.png``  the scenes' imagery (rio-tiler mosaic of the catalog's COGs)
``POST /segment``                 GeoSeg: what a query asks for in a bbox or tile, as GeoJSON polygons
``GET /tilejson.json``            TileJSON 3.0.0 of the overlay (bounds, zooms, centre, URLs)
``GET /map``                      a MapLibre GL JS viewer of imagery, overlay and fields
``GET /static/...``               the viewer's vendored library; never needs the API key
``GET /healthz``                  liveness and cache/batch counters; never needs the API key
================================= =================================================================

Errors (JSON ``{"detail": ...}``): 400 for a bad z/x/y or a zoom too coarse for per-patch
inference (``/segment``: a bad body, an empty or over-long query), 413 (a ``/segment`` body over
16 KiB, or an area over ``geoseg_max_px`` pixels), 401
for a missing or wrong API key, 404 for a tile or area outside every scene, 502 for a scene that
cannot be read (naming it), 503 (from Serve's proxy, at once, with ``Retry-After``) when the
replicas' queues are full, and 503 from ``/segment`` on a server started with ``--no-geoseg``.

This module holds the routes only. Each replica reads the model card once
(:func:`~magseg_ray.model.card.mapping_settings`, as a mapping run's plan does; its field rules through
:func:`~magseg_ray.fields.rules.resolve_rules`, for the tile fields), loads the model
once (:class:`~magseg_ray.model.segmenter.ChipSegmenter`) and asks a
:class:`~magseg_ray.serve.batching.ChipBatcher` for the chips a tile needs (cached, or decoded in
one batched model call for all concurrent requests). Imagery tiles: :mod:`magseg_ray.serve.imagery`.
``POST /segment`` (body, steps, answer and the replica's GeoSeg pipeline:
:mod:`magseg_ray.serve.segment`) runs GeoSeg on the area's pixels of the scene covering most of it.
Sizing, limits and autoscaling: :mod:`magseg_ray.serve.settings`.

No ``from __future__ import annotations`` here: Serve rebuilds the route signatures and FastAPI
must see real types (a string ``Request`` becomes a required query parameter: 422).
"""


import asyncio
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from magseg_ray.errors import (MagsegError, NotCoveredError, NotEnabledError, QueryError, RequestTooLargeError,
                               SceneError, TileRequestError)
from magseg_ray.fields.rules import resolve_rules
from magseg_ray.model.card import mapping_settings
from magseg_ray.model.checkpoint import check_checkpoint_dir
from magseg_ray.model.segmenter import ChipSegmenter
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.scenes.select import StacSelect
from magseg_ray.scenes.store import ObjectStore
from magseg_ray.serve.batching import ChipBatcher, model_key
from magseg_ray.serve.imagery import imagery_tile
from magseg_ray.serve.maps import MapRuns
from magseg_ray.serve.segment import MAX_BODY_BYTES, AreaSegmenter, parse_body, read_body
from magseg_ray.serve.settings import ServeSettings
from magseg_ray.serve.tiles import TMS, parse_tile, plan_tile, render_png, stitch_chips, tile_classes, tile_fields
from magseg_ray.serve.viewer import MAP_HTML, static_file

api = FastAPI(title="magseg-ray tiles", docs_url=None, redoc_url=None, openapi_url=None)

STATUS = {RequestTooLargeError: 413, TileRequestError: 400, QueryError: 400, NotCoveredError: 404, SceneError: 502, NotEnabledError: 503}
"""HTTP status of each user-facing error a request can raise."""


class Unauthorized(MagsegError):
    """Missing or wrong API key."""


def error_response(e: Exception) -> JSONResponse:
    if isinstance(e, Unauthorized):
        return JSONResponse({"detail": str(e)}, 401, headers={"WWW-Authenticate": "X-API-Key"})
    for kind, status in STATUS.items():
        if isinstance(e, kind):
            return JSONResponse({"detail": str(e)}, status)
    raise e


@serve.deployment
@serve.ingress(api)
class TileServer:
    """The tile server replica (see module doc)."""

    def __init__(self, settings: ServeSettings):
        self.settings = s = settings
        self.store = ObjectStore.from_env()
        self.scenes = load_catalog(s.catalog, self.store, StacSelect.of(s)).scenes.sort_values("id").reset_index(drop=True)
        model_dir = s.model_dir()
        m = mapping_settings(model_dir, overlap=s.overlap, seed_px=s.seed_px)
        self.schema, self.seed_px, self.chip, self.patch_size = m.schema, m.seed_px, m.chip, m.card.patch_size
        self.rules = resolve_rules(m.card)  # the card's field rules, as map_region takes them without flags
        segmenter = ChipSegmenter(model_dir, m.card, s.patch_batch, s.max_new_tokens or None,
                                  max(int(s.cpus_per_replica), 1), s.dtype)
        self.chips = ChipBatcher(segmenter, self.store, model_key(m.fingerprint, m.card, s.max_new_tokens),
                                 s.cache_mb * 2**20, s.chip_batch, s.batch_wait_s, s.read_config(m.card))
        self.maps = MapRuns(s.map_roots(), m.fingerprint, self.store) if s.map_roots() else None
        self.key = s.key()
        self.geoseg = AreaSegmenter(s, segmenter, m.card, m.seed_px) if s.geoseg else None

    async def _layers(self, z: str, x: str, y: str):
        tile = parse_tile(z, x, y, self.settings.min_zoom)
        layers = await asyncio.to_thread(plan_tile, tile, self.scenes, self.chip, self.settings.max_chips_per_tile,
                                         self.maps)
        for layer in layers:
            if layer.tasks:
                chips = await asyncio.gather(*(self.chips.chip(t) for t in layer.tasks))
                stitch_chips(layer, chips, self.chip, self.patch_size)
        return tile, layers

    def _check_key(self, request: Request) -> None:
        if not self.key:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("key") or ""
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise Unauthorized("missing or wrong API key (header X-API-Key)" if given else "this server needs an API key (header X-API-Key)")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "scenes": len(self.scenes), "geoseg": self.geoseg is not None,
                "cache": self.chips.cache.stats(), **self.chips.counters}

    @api.get("/tiles/{z}/{x}/{y}.png")
    async def tile_png(self, z: str, x: str, y: str, request: Request):
        try:
            self._check_key(request)
            start = time.perf_counter()
            tile, layers = await self._layers(z, x, y)
            png = await asyncio.to_thread(lambda: render_png(tile_classes(layers, tile), self.schema))
        except MagsegError as e:
            return error_response(e)
        return Response(png, media_type="image/png", headers=self._headers(layers, start))

    @api.get("/tiles/{z}/{x}/{y}.geojson")
    async def tile_geojson(self, z: str, x: str, y: str, request: Request):
        s = self.settings
        try:
            self._check_key(request)
            start = time.perf_counter()
            tile, layers = await self._layers(z, x, y)
            fields = await asyncio.to_thread(tile_fields, layers, tile, self.schema, s.simplify_px, s.min_field_px,
                                             self.seed_px, self.rules, self.store, self.maps, self.chips.read)
        except MagsegError as e:
            return error_response(e)
        return Response(fields.to_json(na="null", drop_id=True), media_type="application/geo+json",
                        headers=self._headers(layers, start))

    @staticmethod
    def _headers(layers, start: float) -> dict:
        sources = sorted({"model" if layer.run is None else "map" for layer in layers})
        return {"X-Tile-Source": ",".join(sources), "X-Scenes": ",".join(layer.scene["id"] for layer in layers),
                "Server-Timing": f"tile;dur={(time.perf_counter() - start) * 1000:.1f}"}

    @api.get("/imagery/{z}/{x}/{y}.png")
    async def imagery_png(self, z: str, x: str, y: str, request: Request):
        try:
            self._check_key(request)
            tile = parse_tile(z, x, y, 0)
            png = await asyncio.to_thread(imagery_tile, tile, self.scenes, self.store, self.chips.read)
        except MagsegError as e:
            return error_response(e)
        return Response(png, media_type="image/png")

    @api.post("/segment")
    async def segment(self, request: Request):
        try:
            self._check_key(request)
            if self.geoseg is None:
                raise NotEnabledError("POST /segment is off: this server was started without GeoSeg (--no-geoseg)")
            declared = request.headers.get("content-length", "0")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:  # refused unread
                raise RequestTooLargeError(f"the body is {declared} bytes; /segment takes at most {MAX_BODY_BYTES}")
            area = parse_body(read_body(await request.body()), self.settings.min_zoom)
            start = time.perf_counter()
            collection = await asyncio.to_thread(self.geoseg.segment, area, self.scenes, self.store)
        except MagsegError as e:
            return error_response(e)
        return Response(json.dumps(collection), media_type="application/geo+json",
                        headers={"X-Scenes": collection["properties"]["scene_id"],
                                 "Server-Timing": f"segment;dur={(time.perf_counter() - start) * 1000:.1f}"})

    @api.get("/tilejson.json")
    async def tilejson(self, request: Request):
        try:
            self._check_key(request)
        except MagsegError as e:
            return error_response(e)
        base = str(request.base_url).rstrip("/")
        query = f"?key={request.query_params['key']}" if "key" in request.query_params else ""
        first = self.scenes.geometry.iloc[0].centroid
        return {"tilejson": "3.0.0", "name": "magseg-ray fields", "scheme": "xyz",
                "tiles": [f"{base}/tiles/{{z}}/{{x}}/{{y}}.png{query}"],
                "geojson": [f"{base}/tiles/{{z}}/{{x}}/{{y}}.geojson{query}"],
                "imagery": [f"{base}/imagery/{{z}}/{{x}}/{{y}}.png{query}"],
                "minzoom": self.settings.min_zoom, "maxzoom": TMS.maxzoom,
                "bounds": [round(float(v), 6) for v in self.scenes.total_bounds],
                "center": [round(first.x, 6), round(first.y, 6), max(self.settings.min_zoom, 17)],
                "legend": {c.name: "#%02x%02x%02x" % c.color for c in self.schema.classes}}

    @api.get("/map")
    async def map_page(self, request: Request):
        try:
            self._check_key(request)
        except MagsegError as e:
            return error_response(e)
        return HTMLResponse(MAP_HTML)

    @api.get("/static/{path:path}")
    async def static(self, path: str):
        """The viewer's web assets (vendored MapLibre GL JS); public, like the page's own code."""
        found = static_file(path)
        if found is None:
            return JSONResponse({"detail": f"no static file {path!r}"}, 404)
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "public, max-age=86400"})


def app(args: dict):
    """Serve application builder (``serve run magseg_ray.serve:app catalog=... model=...``): ``args``
    are the fields of :class:`ServeSettings`, which also sizes the deployment."""
    settings = ServeSettings.from_args(dict(args or {}))
    check_checkpoint_dir(settings.model_dir())
    return TileServer.options(**settings.deployment_options()).bind(settings)
