"""The tile server on a local Ray cluster, over HTTP on 127.0.0.1, against map_region's output.

Applications on one Serve instance, all on the offline ``tiny`` model (random weights: the
classes are meaningless, their agreement with map_region is what is tested), on a catalog of the
demo scenes whose NAIP scene was corrupted after cataloguing:

- ``/``: tiles computed on demand, and ``POST /segment`` (GeoSeg with the server's own model as
  the field-model route, the requested area as the box);
- ``/guarded``: an API key, limits of one ongoing and one queued request (503s under overload),
  and no GeoSeg (``/segment`` answers 503);
- ``/precomputed`` (slow tests): map_region's output over one tile as precomputed maps, after
  map_region has run there; its map is what the on-demand tiles are checked against.
"""

import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from magseg_ray.cluster import free_port
from magseg_ray.map_region import DEMO_DIR, MapConfig, plan, run_map_region
from magseg_ray.masks.schemas import get_schema
from magseg_ray.model.card import ModelPrompt, write_model_prompt
from magseg_ray.scenes.catalog import build_catalog
from magseg_ray.serve.tiles import Tile, classes_of_png, to_tile

INSIDE = Tile(19, 410689, 243046)
"""A tile wholly inside synth_900 (6 chips)."""
SEAM = Tile(19, 410692, 243046)
"""A tile across the synth_900 (UTM 47N) / synth_901 (UTM 48N) seam."""
SETTINGS = {"max_new_tokens": 8, "overlap": 32, "cpus_per_replica": 0.25}
"""As tests/test_map_region.py runs map_region (a 128 px chip card, 32 px overlap, 8 answer tokens)."""
FIELDS3 = get_schema("fields3")


def get(url, key=None, timeout=300):
    """``(status, headers, body)`` of a GET (errors included; headers match names in any case)."""
    request = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def post(url, body, key=None, timeout=300):
    """``(status, headers, body)`` of a POST of ``body`` (JSON unless bytes), errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_dir, tmp_path_factory):
    """The ``/`` and ``/guarded`` applications; Serve is shut down at the end."""
    from ray import serve

    from magseg_ray.serve import app

    root = tmp_path_factory.mktemp("serve")
    model = root / "model"
    shutil.copytree(tiny_dir, model)
    write_model_prompt(model, ModelPrompt(chip_size=128))
    scenes = root / "scenes"
    shutil.copytree(DEMO_DIR / "scenes", scenes)
    catalog = str(build_catalog(scenes).save(root / "catalog.parquet"))
    broken = scenes / "naip_43p7840_m92p4228.tif"
    data = broken.read_bytes()
    broken.write_bytes(data[:2000] + b"\xab" * (len(data) - 2000))  # tile index and tiles destroyed after cataloguing
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        base = {"catalog": catalog, "model": str(model), **SETTINGS, "geoseg_chip_size": 128}
        serve.run(app(base), name="tiles", route_prefix="/")
        guarded = {**base, "api_key": "s3cret", "max_ongoing_requests": 1, "max_queued_requests": 1, "geoseg": False}
        serve.run(app({k: str(v) for k, v in guarded.items()}), name="guarded", route_prefix="/guarded")
        yield {"url": f"http://127.0.0.1:{port}", "root": root, "base": base}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def mapped(served):
    """map_region's output over INSIDE (and a 10 m margin), and ``/precomputed`` serving it."""
    from ray import serve

    from magseg_ray.serve import app

    root = served["root"]
    aoi = root / "aoi.geojson"
    # a little more than the tile, so that the mapped area covers the tile's window in the scene grid
    aoi.write_text(gpd.GeoSeries([INSIDE.footprint.buffer(1e-4, join_style="mitre")], crs="EPSG:4326").to_json())
    run = root / "run"
    base = served["base"]
    run_map_region(plan(MapConfig(aoi=str(aoi), catalog=base["catalog"], model=base["model"], out=str(run), overlap=32,
                                  max_new_tokens=8, cpus_per_actor=0.5)))
    serve.run(app({**base, "maps": str(run)}), name="precomputed", route_prefix="/precomputed")
    return {**served, "run": run}


def mask_in_tile(run, scene, tile):
    with rasterio.open(run / "masks" / f"{scene}.tif") as src:
        return to_tile(src.read(1), src.transform, src.crs.to_string(), tile)


def test_tiles_are_cached_and_seams_are_resolved(served):
    url = served["url"]
    status, headers, body = get(f"{url}/tiles/{INSIDE}.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["X-Tile-Source"] == "model"
    assert (classes_of_png(body, FIELDS3) != 255).all()  # wholly inside a scene: every pixel answered
    # the same tile again comes from the chip cache: no chip computed
    before = json.loads(get(f"{url}/healthz")[2])
    assert get(f"{url}/tiles/{INSIDE}.png")[2] == body
    after = json.loads(get(f"{url}/healthz")[2])
    assert after["chips_computed"] == before["chips_computed"] and after["cache"]["hits"] >= before["cache"]["hits"] + 6
    # across a scene seam: both scenes, each clipped to the part it owns, nothing overlapping
    status, headers, body = get(f"{url}/tiles/{SEAM}.geojson")
    assert status == 200 and headers["Content-Type"] == "application/geo+json"
    assert headers["X-Scenes"] == "synth_900,synth_901"
    seam = gpd.GeoDataFrame.from_features(json.loads(body)["features"], crs="EPSG:4326")
    assert set(seam["scene_id"]) == {"synth_900", "synth_901"} and set(seam["source"]) == {"model"}
    assert seam.within(SEAM.footprint.buffer(1e-9)).all()
    utm = seam.to_crs("EPSG:32648")
    assert utm.area.sum() == pytest.approx(utm.union_all().area, rel=1e-3)
    status, _, body = get(f"{url}/tiles/{SEAM}.png")
    assert status == 200 and (classes_of_png(body, FIELDS3) != 255).mean() > 0.99


def test_bad_requests(served):
    url = served["url"]
    for path, status, words in [
        ("tiles/25/1/1.png", 400, "zoom must be within"),
        ("tiles/18/999999999/1.png", 400, "x and y must be within"),
        ("tiles/18/a/1.geojson", 400, "integers"),
        ("tiles/8/201/121.png", 400, "too coarse"),
        ("tiles/14/3985/5971.png", 400, "ask for zoom 16 or finer"),  # min zoom passes, but the tile needs too many chips
        ("tiles/18/1000/1000.png", 404, "outside every one of the 3 catalogued scenes"),
        ("tiles/19/127543/191077.png", 502, "naip_43p7840_m92p4228"),
        ("tiles/19/127543/191077.geojson", 502, "naip_43p7840_m92p4228"),
        ("imagery/19/127543/191077.png", 502, "naip_43p7840_m92p4228"),
    ]:
        got, _, body = get(f"{url}/{path}")
        assert got == status and words in json.loads(body)["detail"], (path, got, body[:300])
    assert get(f"{url}/tiles/{INSIDE}.png")[0] == 200  # a broken scene elsewhere harms no other tile
    assert get(f"{url}/imagery/{INSIDE}.png")[0] == 200


def test_api_key(served):
    url = f"{served['url']}/guarded"
    assert get(f"{url}/healthz")[0] == 200
    for path in (f"tiles/{INSIDE}.png", f"tiles/{INSIDE}.geojson", "tilejson.json", "map", f"imagery/{INSIDE}.png"):
        assert get(f"{url}/{path}")[0] == 401
        assert get(f"{url}/{path}", key="wrong")[0] == 401
    assert get(f"{url}/imagery/{INSIDE}.png", key="s3cret")[0] == 200
    status, _, body = get(f"{url}/tilejson.json?key=s3cret")
    tj = json.loads(body)
    assert status == 200 and tj["tiles"][0].endswith("/guarded/tiles/{z}/{x}/{y}.png?key=s3cret")
    assert get(f"{url}/map?key=s3cret")[2].startswith(b"<!doctype html>")


BBOX = [101.9985, 12.9995, 101.9989, 12.9999]
"""About 43 x 44 m inside synth_900."""


def test_segment_a_bbox_and_a_tile(served):
    url = f"{served['url']}/segment"
    status, headers, body = post(url, {"query": "the field", "bbox": BBOX})
    assert status == 200 and headers["Content-Type"] == "application/geo+json" and headers["X-Scenes"] == "synth_900"
    answer = json.loads(body)
    props = answer["properties"]
    assert answer["type"] == "FeatureCollection" and props["query"] == "the field" and props["scene_id"] == "synth_900"
    assert props["phrase"] == "the field" and props["box"] == [0, 0, props["window"]["width"], props["window"]["height"]]
    assert props["refined_lonlat"][0] == pytest.approx(BBOX[0], abs=1e-5)  # the window is the bbox on the scene grid
    fields = gpd.GeoDataFrame.from_features(answer["features"], crs="EPSG:4326")
    assert len(fields) > 0 and props["case"] == "text" and props["reason"] == "", props  # the tiny model: all field
    assert fields.within(shapely.box(*BBOX).buffer(1e-9)).all()
    assert set(fields["scene_id"]) <= {"synth_900"} and (fields["metrics:area"] > 0).all()

    status, headers, body = post(url, {"query": "fields", "z": INSIDE.z, "x": INSIDE.x, "y": INSIDE.y})
    answer = json.loads(body)
    assert status == 200 and answer["properties"]["area"] == f"tile {INSIDE}", body[:300]
    fields = gpd.GeoDataFrame.from_features(answer["features"], crs="EPSG:4326")
    assert fields.within(INSIDE.footprint.buffer(1e-9)).all()


def test_segment_an_area_of_several_chips(served):
    """A bbox of about 195 x 200 px with 128 px GeoSeg chips: the scene grid's chips, each segmented on
    its own, pasted by the overlap rule; the tiny model calls every pixel field, so the pasted mask is
    the whole area, one piece: a gap or a shift between chips would show."""
    bbox = [101.9980, 12.9990, 101.9989, 12.9999]
    status, _, body = post(f"{served['url']}/segment", {"query": "the field", "bbox": bbox})
    answer = json.loads(body)
    props = answer["properties"]
    assert status == 200 and props["scene_id"] == "synth_900" and props["area"].startswith("bbox"), body[:300]
    assert len(props["chips"]) >= 4 and all(c["window"]["height"] == 128 for c in props["chips"])
    assert {c["chip_id"].split("/")[0] for c in props["chips"]} == {"synth_900"}
    assert all(c["case"] == "text" and c["reason"] == "" for c in props["chips"]), props["chips"]
    fields = gpd.GeoDataFrame.from_features(answer["features"], crs="EPSG:4326")
    area = gpd.GeoSeries([shapely.box(*bbox)], crs="EPSG:4326").to_crs("EPSG:32647").area.iloc[0]
    assert len(fields) == 1 and fields["metrics:area"].iloc[0] == pytest.approx(area, rel=0.01)
    assert fields.within(shapely.box(*bbox).buffer(1e-9)).all() and (fields["case"] == "text").all()
    assert (fields["phrase"] == "the field").all() and (fields["query"] == "the field").all()


@pytest.mark.slow  # a replica of the demo model, which answers ~9 patches: minutes on 2 busy cores
def test_segment_with_the_demo_model(served):
    """The default GeoSeg of a server on the shipped demo model: no checkpoint but its own."""
    from ray import serve

    from magseg_ray.serve import app

    settings = {"catalog": served["base"]["catalog"], "cpus_per_replica": 0.25}
    serve.run(app(settings), name="demo", route_prefix="/demo")
    try:
        status, _, body = post(f"{served['url']}/demo/segment", {"query": "the field", "bbox": BBOX})
        answer = json.loads(body)
        assert status == 200 and answer["properties"]["scene_id"] == "synth_900", body[:300]
        fields = gpd.GeoDataFrame.from_features(answer["features"], crs="EPSG:4326")
        assert len(fields) > 0 or answer["properties"]["reason"], answer["properties"]
        assert fields.within(shapely.box(*BBOX).buffer(1e-9)).all()
    finally:
        serve.delete("demo")


def test_segment_bad_requests(served):
    url = f"{served['url']}/segment"
    naip = [-92.424, 43.783, -92.4235, 43.7835]
    for body, status, words in [
        ({"query": "", "bbox": BBOX}, 400, "query is empty"),
        ({"bbox": BBOX}, 400, "query is empty"),
        (b"{not json", 400, "must be JSON"),
        (b"[" * 10_000, 400, "must be JSON"),
        (json.dumps({"query": "field " * 100_000, "bbox": BBOX}).encode(), 413, "at most"),
        ({"query": "f" * 501, "bbox": BBOX}, 400, "at most 500"),
        ({"query": "q", "bbox": [BBOX[2], BBOX[1], BBOX[0], BBOX[3]]}, 400, "west < east"),
        ({"query": "q", "bbox": [101.99, 12.99, 102.01, 13.01]}, 413, "(geoseg_max_px); ask for a smaller area"),
        ({"query": "q", "z": 12, "x": 3208, "y": 1898}, 413, "(geoseg_max_px); ask for a smaller area"),
        ({"query": "q", "z": 8, "x": 201, "y": 121}, 400, "too coarse"),
        ({"query": "q", "bbox": [0, 0, 0.001, 0.001]}, 404, "outside every one of the 3 catalogued scenes"),
        ({"query": "q", "bbox": naip}, 502, "naip_43p7840_m92p4228"),
    ]:
        got, _, answer = post(url, body)
        assert got == status and words in json.loads(answer)["detail"], (body, got, answer[:300])
    assert get(f"{url}")[0] == 405


def test_segment_needs_the_key_and_geoseg(served):
    url = f"{served['url']}/guarded/segment"
    body = {"query": "the field", "bbox": BBOX}
    assert post(url, body)[0] == 401 and post(url, body, key="wrong")[0] == 401
    status, _, answer = post(url, body, key="s3cret")
    assert status == 503 and "without GeoSeg (--no-geoseg)" in json.loads(answer)["detail"]
    assert json.loads(get(f"{served['url']}/guarded/healthz")[2])["geoseg"] is False


def test_overload_answers_503_at_once(served):
    url = f"{served['url']}/guarded"
    tiles = [Tile(19, 410689 + i % 3, 243046 + i // 3) for i in range(8)]  # not cached in this app: the model runs
    results = [None] * len(tiles)

    def fetch(i):
        start = time.perf_counter()
        status = get(f"{url}/tiles/{tiles[i]}.png", key="s3cret")[0]
        results[i] = (status, time.perf_counter() - start)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(tiles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, results
    assert max(seconds for status, seconds in results if status == 503) < 5, results


@pytest.mark.slow
def test_tiles_match_map_region_and_precomputed_maps_are_served(mapped):
    url = mapped["url"]
    want = mask_in_tile(mapped["run"], "synth_900", INSIDE)
    known = want != 255
    assert known.all()  # map_region mapped the AOI: this tile and a margin
    got = classes_of_png(get(f"{url}/tiles/{INSIDE}.png")[2], FIELDS3)
    assert (got == want).mean() > 0.95  # on demand: the same chips, decoded in other batches

    status, headers, body = get(f"{url}/tiles/{INSIDE}.geojson")
    fields = gpd.GeoDataFrame.from_features(json.loads(body)["features"], crs="EPSG:4326")
    assert status == 200 and len(fields) > 0 and set(fields["scene_id"]) == {"synth_900"}
    assert fields["id"].str.startswith("synth_900-tile-").all() and fields["id"].is_unique  # the viewer counts by id
    assert fields.within(INSIDE.footprint.buffer(1e-9)).all()
    reference = gpd.read_parquet(mapped["run"] / "fields").clip(INSIDE.footprint)
    a, b = fields.union_all(), reference.union_all()
    assert shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b)) > 0.9

    status, headers, body = get(f"{url}/precomputed/tiles/{INSIDE}.png")
    assert status == 200 and headers["X-Tile-Source"] == "map"
    assert np.array_equal(classes_of_png(body, FIELDS3), want)  # read from masks/, exactly
    status, headers, body = get(f"{url}/precomputed/tiles/{INSIDE}.geojson")
    assert status == 200 and headers["X-Tile-Source"] == "map"
    features = json.loads(body)["features"]
    assert features and {f["properties"]["source"] for f in features} == {f"map:{mapped['run']}"}
    ids = set(gpd.read_parquet(mapped["run"] / "fields")["id"])
    assert {f["properties"]["id"] for f in features} <= ids  # the run's own field ids
    assert get(f"{url}/precomputed/tiles/{SEAM}.png")[1]["X-Tile-Source"] == "model"  # not covered by the run


@pytest.mark.slow
def test_tile_fields_follow_the_model_cards_field_rules(served):
    """A server whose model card has field rules makes its tile fields with them: here a maximum field
    size under every field's (1 m², so every piece is dropped) and the edge split on (the window's
    pixels read through the server's store). The same weights with a card without rules: fields."""
    from ray import serve

    from magseg_ray.serve import app

    url, base = served["url"], served["base"]
    model = served["root"] / "model-with-rules"
    shutil.copytree(base["model"], model)
    write_model_prompt(model, ModelPrompt(chip_size=128, field_max_m2=1.0, field_edge_quantile=0.85))
    serve.run(app({**base, "model": str(model)}), name="rules", route_prefix="/rules")
    plain = json.loads(get(f"{url}/tiles/{INSIDE}.geojson")[2])["features"]
    status, headers, body = get(f"{url}/rules/tiles/{INSIDE}.geojson")
    assert len(plain) > 0 and status == 200 and headers["X-Tile-Source"] == "model", body[:300]
    assert json.loads(body)["features"] == []
    assert get(f"{url}/rules/tiles/{INSIDE}.png")[0] == 200


def browser():
    """``tests/serve/browser.py``: headless Chromium over the DevTools protocol, in real time."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("browser", Path(__file__).with_name("browser.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_map_page_in_headless_chromium(served, tmp_path):
    """The /map viewer (vendored MapLibre GL JS, nothing from a CDN) loads the overlay tiles and
    the field GeoJSON of the server it comes from and draws the field outlines (screenshot kept at
    $MAGSEG_SCREENSHOT if set)."""
    web = browser()
    if web.chromium() is None:
        pytest.skip("no chromium on PATH: the /map viewer test needs a headless browser (Debian: apt-get install chromium)")
    url = served["url"]
    status, headers, body = get(f"{url}/static/maplibre-gl/maplibre-gl.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and b"maplibregl" in body
    assert get(f"{url}/static/maplibre-gl/LICENSE.txt")[0] == 200
    assert get(f"{url}/static/../deployment.py")[0] == 404 and get(f"{url}/static/nope.js")[0] == 404
    html = get(f"{url}/map")[2].decode()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["static/maplibre-gl/maplibre-gl.css", "static/maplibre-gl/maplibre-gl.js"]

    lon, lat = INSIDE.footprint.centroid.coords[0]
    shot = tmp_path / "map.png"
    counters, console = web.open_page(f"{url}/map#19/{lat:.6f}/{lon:.6f}", web.fields_drawn, seconds=240, shot=shot)
    assert counters.get("classTiles", 0) > 0 and counters.get("imageryTiles", 0) > 0, (counters, console)
    assert counters.get("geojsonTiles", 0) > 0 and counters.get("fields", 0) > 0, (counters, console)
    assert counters.get("drawn", 0) > 0 and counters.get("idle") == 1 and counters["errors"] == 0, (counters, console)
    if os.environ.get("MAGSEG_SCREENSHOT"):
        shutil.copy(shot, os.environ["MAGSEG_SCREENSHOT"])
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (512, 768)
    pixels = image.reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 500  # imagery and overlay drawn
    # the outlines (#00e5ff, 1.5 px) blend with what lies under them: count pixels near that colour
    cyan = (pixels[:, 0] < 90) & (pixels[:, 1] > 170) & (pixels[:, 2] > 190)
    assert cyan.sum() > 200, int(cyan.sum())
