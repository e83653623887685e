"""POST /segment's pure parts, without Ray: the body, the scene and pixel window of an area, the
GeoJSON answer, and the GeoSeg settings (the served route is tested in test_serve.py)."""

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.transform import Affine

from magseg_ray.errors import ConfigError, NotCoveredError, QueryError, RequestTooLargeError, TileRequestError
from magseg_ray.geoseg.outputs import Scene
from magseg_ray.geoseg.pipeline import Result
from magseg_ray.map_region import DEMO_DIR
from magseg_ray.scenes.catalog import build_catalog
from magseg_ray.serve.segment import (MAX_BODY_BYTES, MAX_QUERY_CHARS, Area, area_scene, area_window, feature_collection,
                                      parse_body, read_body)
from magseg_ray.serve.settings import ServeSettings
from magseg_ray.serve.tiles import Tile

BBOX = [101.9985, 12.9995, 101.9989, 12.9999]
"""About 43 x 44 m inside synth_900 (0.5 m pixels)."""


@pytest.fixture(scope="module")
def scenes():
    return build_catalog(DEMO_DIR / "scenes").scenes.sort_values("id").reset_index(drop=True)


def test_body_of_a_bbox_and_of_a_tile():
    area = parse_body({"query": "  the field ", "bbox": BBOX}, min_zoom=12)
    assert area.query == "the field" and area.footprint.bounds == tuple(BBOX) and area.name.startswith("bbox [")
    area = parse_body({"query": "the field", "z": 19, "x": 410689, "y": 243046}, min_zoom=12)
    assert area.footprint.equals(Tile(19, 410689, 243046).footprint) and area.name == "tile 19/410689/243046"


@pytest.mark.parametrize("body, error, words", [
    ({"bbox": BBOX}, QueryError, "query is empty"),
    ({"query": "  ", "bbox": BBOX}, QueryError, "query is empty"),
    ([1, 2], TileRequestError, "JSON object"),
    ({"query": "q", "bbox": BBOX, "zoom": 3}, TileRequestError, "unknown keys ['zoom']"),
    ({"query": "q"}, TileRequestError, "either a bbox or"),
    ({"query": "q", "bbox": BBOX, "z": 19}, TileRequestError, "either a bbox or"),
    ({"query": "q", "bbox": BBOX[:3]}, TileRequestError, "[west, south, east, north]"),
    ({"query": "q", "bbox": [1, 0, 0, 1]}, TileRequestError, "west < east"),
    ({"query": "q", "bbox": [0, 0, 1, 91]}, TileRequestError, "south < north"),
    ({"query": "q", "bbox": [0, 0, "1", 1]}, TileRequestError, "[west, south, east, north]"),
    ({"query": "q", "z": 19, "x": 1}, TileRequestError, "integers z, x and y"),
    ({"query": "q", "z": 19.5, "x": 1, "y": 1}, TileRequestError, "integers z, x and y"),
    ({"query": "q", "z": 8, "x": 201, "y": 121}, TileRequestError, "too coarse"),
])
def test_bad_bodies(body, error, words):
    with pytest.raises(error) as info:
        parse_body(body, min_zoom=12)
    assert words in str(info.value)


def test_scene_and_window_of_an_area(scenes):
    area = parse_body({"query": "q", "bbox": BBOX}, 12)
    scene = area_scene(scenes, area)
    row, col, height, width = area_window(scene, area, 10_000)
    assert scene["id"] == "synth_900" and 85 <= height <= 92 and 85 <= width <= 92
    assert 0 < row and row + height < 512 and 0 < col and col + width < 512
    with pytest.raises(RequestTooLargeError, match="pixels of scene synth_900, over the 1,000 one /segment"):
        area_window(scene, area, 1000)
    # across the seam, mostly in synth_901: that scene; larger than a scene: refused before the cut
    seam = Area("q", shapely.box(101.9999, 12.9995, 102.0010, 12.9999), "seam")
    assert area_scene(scenes, seam)["id"] == "synth_901"
    huge = Area("q", shapely.box(101.9, 12.9, 102.1, 13.1), "huge")
    with pytest.raises(RequestTooLargeError, match="smaller area"):
        area_window(area_scene(scenes, huge), huge, 1024 * 1024)
    with pytest.raises(NotCoveredError, match="outside every one of the 3 catalogued scenes"):
        area_scene(scenes, Area("q", shapely.box(0, 0, 0.001, 0.001), "nowhere"))


def test_an_area_cut_to_its_scene(scenes):
    west = scenes.set_index("id").loc["synth_900"].geometry.bounds[0]
    area = Area("q", shapely.box(west - 0.0002, 12.9995, west + 0.0002, 12.9999), "edge")
    row, col, height, width = area_window(area_scene(scenes, area), area, 10_000)
    assert col == 0 and 40 <= width <= 46 and height > 80


def test_feature_collection_is_geojson_clipped_to_the_area():
    transform = Affine(0.5, 0, 825300.0, 0, -0.5, 1439100.0)  # synth_900's grid (UTM 47N), a 40 x 40 window
    mask = np.zeros((40, 40), bool)
    mask[5:20, 5:35] = True
    mask[30:38, 30:38] = True
    result = Result(mask, phrase="field", box=(0, 0, 40, 40), refined=(0, 0, 40, 40), case="text")
    scene = Scene(np.zeros((40, 40, 3), np.uint8), transform, "EPSG:32647", "x.tif")
    lonlat = _bounds(transform, "EPSG:32647", 40)
    area = Area("the field", shapely.box(*lonlat).buffer(-2e-5, join_style="mitre"), "bbox")  # cuts the pieces
    out = json.loads(json.dumps(feature_collection(result, scene, area, "synth_900", (10, 20, 40, 40))))
    assert out["type"] == "FeatureCollection" and len(out["features"]) == 2
    props = out["properties"]
    assert props["query"] == "the field" and props["phrase"] == "field" and props["reason"] == ""
    assert props["scene_id"] == "synth_900" and props["window"] == {"row_off": 10, "col_off": 20, "height": 40, "width": 40}
    assert props["refined_lonlat"] == pytest.approx(list(lonlat), abs=1e-6)
    for f in out["features"]:
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.within(area.footprint.buffer(1e-9)) and f["properties"]["scene_id"] == "synth_900"
        utm = gpd.GeoSeries([geom], crs="EPSG:4326").to_crs("EPSG:32647").area.iloc[0]
        assert f["properties"]["metrics:area"] == pytest.approx(utm, rel=1e-3)  # measured after the cut, in m²
    empty = Result(np.zeros((40, 40), bool), phrase="pond", reason="no route gave a mask")
    out = feature_collection(empty, scene, area, "synth_900", (10, 20, 40, 40))
    assert out["features"] == [] and out["properties"]["reason"] == "no route gave a mask"
    assert out["properties"]["box_lonlat"] is None


def _bounds(transform, crs, size):
    from rasterio.warp import transform_bounds

    x0, y0 = transform @ (0, 0)
    x1, y1 = transform @ (size, size)
    return transform_bounds(crs, "EPSG:4326", x0, y1, x1, y0, densify_pts=21)


def test_geoseg_settings():
    models, config = ServeSettings().geoseg_models()  # default: the server's own model as route B
    assert config.routes == "text" and models.text_route == "field-model" and models.grounder is None
    models, config = ServeSettings(geoseg_tiny="/tmp/t", geoseg_text_route="none").geoseg_models()
    assert config.routes == "points" and models.tiny == "/tmp/t"
    _, config = ServeSettings(geoseg_clip="c", geoseg_points="p").geoseg_models()
    assert config.routes == "both"
    for bad, words in [({"geoseg_clip": "c"}, "both --geoseg-clip and --geoseg-points"),
                       ({"geoseg_text_route": "none"}, "route A alone"),
                       ({"geoseg_text_route": "sam3"}, "needs --geoseg-sam3"),
                       ({"geoseg_text_route": "clip"}, "must be one of"),
                       ({"geoseg_max_px": 0}, "geoseg_max_px must be at least 1")]:
        with pytest.raises(ConfigError, match=words):
            ServeSettings(**bad)
    ServeSettings(geoseg=False, geoseg_text_route="none")  # off: nothing to check
    assert ServeSettings.from_args({"geoseg": "false", "geoseg_max_px": "100"}).geoseg_max_px == 100


def test_geoseg_flags_of_the_serve_job():
    """Every GeoSeg setting is a flag of jobs/serve.py (they come from ServeSettings' fields)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = subprocess.run([sys.executable, str(root / "jobs" / "serve.py"), "--help"], capture_output=True, text=True,
                          check=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}).stdout
    for flag in ("--no-geoseg", "--geoseg-text-route {field-model,sam3,none}", "--geoseg-grounder", "--geoseg-clip",
                 "--geoseg-points", "--geoseg-sam3", "--geoseg-tiny", "--geoseg-max-px"):
        assert flag in text, flag


def test_bodies_are_bounded_in_size_depth_and_query_length():
    # Before: a 20 MB query answered 200 (echoed into every feature) and 100,000 nested "[" a 500.
    assert read_body(json.dumps({"query": "q", "bbox": BBOX}).encode())["query"] == "q"
    with pytest.raises(RequestTooLargeError, match=f"at most {MAX_BODY_BYTES}"):
        read_body(json.dumps({"query": "field " * 4000, "bbox": BBOX}).encode())
    with pytest.raises(TileRequestError, match="must be JSON"):
        read_body(b"[" * (MAX_BODY_BYTES - 1))  # past the parser's depth: RecursionError, not a 500
    with pytest.raises(QueryError, match=f"at most {MAX_QUERY_CHARS}"):
        parse_body({"query": "f" * (MAX_QUERY_CHARS + 1), "bbox": BBOX}, min_zoom=12)
