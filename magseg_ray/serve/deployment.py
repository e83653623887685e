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
inference (``/segment``: a bad body, an empty query, an area over ``geoseg_max_px`` pixels), 401
for a missing or wrong API key, 404 for a tile or area outside every scene, 502 for a scene that
cannot be read (naming it), 503 (from Serve's proxy, at once, with ``Retry-After``) when the
replicas' queues are full, and 503 from ``/segment`` on a server started with ``--no-geoseg``.

Each replica loads the model once (:class:`~magseg_ray.model.segmenter.ChipSegmenter`). Tile
requests ask for the chips they need; chips in the :class:`~magseg_ray.serve.cache.ChipCache`
come back at once, the others go through one ``@serve.batch`` method, which gathers the chips of
all concurrent requests into one model call, computes each distinct chip once (neighbouring tiles
share chips), decoding them in one continuous batch, and caches them. Sizing, limits and
autoscaling: :mod:`magseg_ray.serve.settings`.

``POST /segment`` (body, steps and answer: :mod:`magseg_ray.serve.segment`) runs GeoSeg on the
area's pixels of the scene covering most of it. Each replica builds its GeoSeg pipeline once, at
start; its field-model route shares the replica's loaded model. GeoSeg calls run one at a time per
replica (its routes keep per-call state).

No ``from __future__ import annotations`` here: Serve rebuilds the route signatures and FastAPI
must see real types (a string ``Request`` becomes a required query parameter: 422).
"""


import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
# At import, not in the request thread: two worker threads importing rio_tiler at once leave it
# half-initialised ("cannot import name 'Reader'") for the replica's life.
from rio_tiler.errors import EmptyMosaicError
from rio_tiler.io import Reader
from rio_tiler.mosaic import mosaic_reader

from magseg_ray.errors import (MagsegError, NotCoveredError, NotEnabledError, QueryError, SceneError,
                               TileRequestError)
from magseg_ray.serve.settings import ServeSettings

api = FastAPI(title="magseg-ray tiles", docs_url=None, redoc_url=None, openapi_url=None)

STATUS = {TileRequestError: 400, QueryError: 400, NotCoveredError: 404, SceneError: 502, NotEnabledError: 503}
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
        from magseg_ray.chips.windows import ChipConfig
        from magseg_ray.model.checkpoint import model_fingerprint
        from magseg_ray.masks.schemas import get_schema
        from magseg_ray.masks.instances import resolve_seed_px
        from magseg_ray.model.card import ModelPrompt, read_model_prompt
        from magseg_ray.model.segmenter import ChipSegmenter
        from magseg_ray.scenes.catalog import load_catalog
        from magseg_ray.scenes.store import ObjectStore
        from magseg_ray.serve.cache import ChipCache
        from magseg_ray.serve.maps import MapRuns

        self.settings = settings
        self.store = ObjectStore.from_env()
        self.scenes = load_catalog(settings.catalog, self.store).scenes.sort_values("id").reset_index(drop=True)
        model_dir = settings.model_dir()
        card = read_model_prompt(model_dir) or ModelPrompt()
        self.schema = get_schema(card.schema)
        self.seed_px = resolve_seed_px(settings.seed_px, card.field_seed_px)
        self.patch_size = card.patch_size
        self.chip = ChipConfig.for_chip_size(card.chip_size, settings.overlap)
        fingerprint = model_fingerprint(model_dir)
        self.model_key = hashlib.sha256(json.dumps(
            [fingerprint, asdict(card), card.chip_size, settings.max_new_tokens]).encode()).hexdigest()[:16]
        self.segmenter = ChipSegmenter(model_dir, card, settings.patch_batch, settings.max_new_tokens or None,
                                       max(int(settings.cpus_per_replica), 1))
        self.cache = ChipCache(settings.cache_mb * 2**20)
        self.maps = MapRuns(settings.map_roots(), fingerprint, self.store) if settings.map_roots() else None
        self.key = settings.key()
        self.counters = {"chips_computed": 0, "model_calls": 0, "largest_call": 0, "chip_requests": 0}
        self._segment_batch.set_max_batch_size(settings.chip_batch)
        self._segment_batch.set_batch_wait_timeout_s(settings.batch_wait_s)
        # GeoSeg is built here, at replica start, not on the first request: a bad checkpoint folder
        # fails the deployment where its operator sees it, no user's request pays the load, and
        # each replica holds one pipeline for its lifetime
        self.geoseg = self._load_geoseg(card) if settings.geoseg else None
        self._geoseg_lock = threading.Lock()

    def _load_geoseg(self, card):
        """GeoSeg's pipeline (:meth:`ServeSettings.geoseg_models`); the field-model route is this
        replica's model, not a second copy."""
        from magseg_ray.geoseg.fieldroute import FieldRoute
        from magseg_ray.geoseg.run import build_pipeline

        s = self.settings
        models, config = s.geoseg_models()
        route = FieldRoute(self.segmenter.model, self.segmenter.processor, card.prompt(), card.chip_size,
                           batch_size=s.patch_batch, max_new_tokens=s.max_new_tokens or None,
                           boundary_bias=card.boundary_bias, field_seed_px=self.seed_px)
        return build_pipeline(models, config, field_route=route)

    # ---- chips ------------------------------------------------------------------------------------

    def _cache_key(self, task) -> tuple:
        return (task.scene_id, task.row_off, task.col_off, self.model_key)

    async def _chip(self, task):
        self.counters["chip_requests"] += 1
        hit = self.cache.get(self._cache_key(task))
        if hit is not None:
            return hit
        result = await self._segment_batch(task)
        if isinstance(result, Exception):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _segment_batch(self, tasks: list) -> list:
        return await asyncio.to_thread(self._segment_many, tasks)

    def _segment_many(self, tasks: list) -> list:
        """One model call: every distinct chip of ``tasks`` not in the cache, read, then decoded in
        one continuous batch (a scene that cannot be read, or a chip the model cannot take, gives
        its :class:`SceneError` to the requests that asked for it, not to the others)."""
        from magseg_ray.chips.pipeline import patches_to_answer
        from magseg_ray.chips.read import read_chip

        self.counters["model_calls"] += 1
        self.counters["largest_call"] = max(self.counters["largest_call"], len(tasks))
        done: dict = {}
        read: list = []
        for task in dict.fromkeys(tasks):
            done[task] = self.cache.get(self._cache_key(task))
            if done[task] is None:
                try:
                    read.append((task, read_chip(task, store=self.store)))
                except MagsegError as e:
                    done[task] = SceneError(f"scene {task.scene_id} cannot be read: {e}")
        chips = [(chip.image, chip.valid, patches_to_answer(chip.valid, self.patch_size)) for _, chip in read]
        for (task, _), value in zip(read, self.segmenter.segment_chips(chips) if chips else []):
            if isinstance(value, MagsegError):
                value = SceneError(f"scene {task.scene_id}: the model cannot take the chip at row {task.row_off}, "
                                   f"column {task.col_off}: {value}")
            else:
                self.cache.put(self._cache_key(task), value)
                self.counters["chips_computed"] += 1
            done[task] = value
        return [done[t] for t in tasks]

    async def _layers(self, z: str, x: str, y: str):
        from magseg_ray.serve.tiles import parse_tile, plan_tile, stitch_chips

        tile = parse_tile(z, x, y, self.settings.min_zoom)
        layers = await asyncio.to_thread(plan_tile, tile, self.scenes, self.chip, self.settings.max_chips_per_tile,
                                         self.maps)
        for layer in layers:
            if layer.tasks:
                chips = await asyncio.gather(*(self._chip(t) for t in layer.tasks))
                stitch_chips(layer, chips, self.chip, self.patch_size)
        return tile, layers

    # ---- routes -----------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> None:
        if not self.key:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("key") or ""
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise Unauthorized("missing or wrong API key (header X-API-Key)" if given else "this server needs an API key (header X-API-Key)")

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "scenes": len(self.scenes), "geoseg": self.geoseg is not None,
                "cache": self.cache.stats(), **self.counters}

    @api.get("/tiles/{z}/{x}/{y}.png")
    async def tile_png(self, z: str, x: str, y: str, request: Request):
        from magseg_ray.serve.tiles import render_png, tile_classes

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
        from magseg_ray.serve.tiles import tile_fields

        s = self.settings
        try:
            self._check_key(request)
            start = time.perf_counter()
            tile, layers = await self._layers(z, x, y)
            fields = await asyncio.to_thread(tile_fields, layers, tile, self.schema, s.simplify_px, s.min_field_px,
                                             self.seed_px, self.maps)
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
        from magseg_ray.serve.tiles import parse_tile

        try:
            self._check_key(request)
            tile = parse_tile(z, x, y, 0)
            png = await asyncio.to_thread(self._imagery, tile)
        except MagsegError as e:
            return error_response(e)
        return Response(png, media_type="image/png")

    def _imagery(self, tile) -> bytes:
        """The tile of the scenes' imagery: a rio-tiler mosaic of the catalog's COGs (first scene by
        id on top), uint16 scenes stretched as the model sees them."""
        import rasterio

        from magseg_ray.chips.read import ReadConfig, scene_stretch
        from magseg_ray.serve.tiles import TILE_SIZE, scenes_under

        def read(scene, *args, **kwargs):
            bands = (1, 2, 3) if scene["bands"] >= 3 else (1, 1, 1)
            try:
                with Reader(self.store.gdal_path(scene["uri"])) as src:
                    img = src.tile(*args, indexes=bands, **kwargs)
                if scene["dtype"] == "uint16":
                    lo, hi = scene_stretch(scene["uri"], bands, ReadConfig().stretch_percentiles, self.store)
                    img.rescale(in_range=list(zip(lo, hi)))
                return img
            except rasterio.errors.RasterioError as e:
                raise SceneError(f"scene {scene['id']} cannot be read: {e}") from None

        hits = scenes_under(self.scenes, tile.footprint, f"tile {tile}").to_dict("records")
        try:
            with self.store.rasterio_env():
                img, _ = mosaic_reader(hits, read, tile.x, tile.y, tile.z, tilesize=TILE_SIZE, threads=0)
        except EmptyMosaicError:
            raise NotCoveredError(f"tile {tile} holds no imagery") from None
        return img.render(img_format="PNG")

    @api.post("/segment")
    async def segment(self, request: Request):
        from magseg_ray.serve.segment import BODY_FORMS, parse_body

        try:
            self._check_key(request)
            if self.geoseg is None:
                raise NotEnabledError("POST /segment is off: this server was started without GeoSeg (--no-geoseg)")
            try:
                body = await request.json()
            except ValueError:  # not JSON, or not UTF-8
                raise TileRequestError(f"the body must be JSON: {BODY_FORMS}") from None
            area = parse_body(body, self.settings.min_zoom)
            start = time.perf_counter()
            collection = await asyncio.to_thread(self._segment_area, area)
        except MagsegError as e:
            return error_response(e)
        return Response(json.dumps(collection), media_type="application/geo+json",
                        headers={"X-Scenes": collection["properties"]["scene_id"],
                                 "Server-Timing": f"segment;dur={(time.perf_counter() - start) * 1000:.1f}"})

    def _segment_area(self, area) -> dict:
        """GeoSeg on the area's window of the scene that covers most of it (:mod:`.segment`)."""
        from magseg_ray.geoseg.outputs import read_scene
        from magseg_ray.serve.segment import area_scene, area_window, feature_collection

        scene = area_scene(self.scenes, area)
        window = area_window(scene, area, self.settings.geoseg_max_px)
        try:
            pixels = read_scene(scene["uri"], self.store, window=window)
        except SceneError as e:
            raise SceneError(f"scene {scene['id']} cannot be read: {e}") from None
        box = None if self.geoseg.grounder is not None else (0, 0, window[3], window[2])
        with self._geoseg_lock:
            result = self.geoseg.segment(pixels.image, area.query, box=box)
        return feature_collection(result, pixels, area, scene["id"], window)

    @api.get("/tilejson.json")
    async def tilejson(self, request: Request):
        from magseg_ray.serve.tiles import TMS

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
        from magseg_ray.serve.viewer import MAP_HTML

        try:
            self._check_key(request)
        except MagsegError as e:
            return error_response(e)
        return HTMLResponse(MAP_HTML)

    @api.get("/static/{path:path}")
    async def static(self, path: str):
        """The viewer's web assets (vendored MapLibre GL JS); public, like the page's own code."""
        from magseg_ray.serve.viewer import static_file

        found = static_file(path)
        if found is None:
            return JSONResponse({"detail": f"no static file {path!r}"}, 404)
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "public, max-age=86400"})


def app(args: dict):
    """Serve application builder (``serve run magseg_ray.serve:app catalog=... model=...``): ``args``
    are the fields of :class:`ServeSettings`, which also sizes the deployment."""
    from magseg_ray.model.checkpoint import check_checkpoint_dir

    settings = ServeSettings.from_args(dict(args or {}))
    check_checkpoint_dir(settings.model_dir())
    return TileServer.options(**settings.deployment_options()).bind(settings)
