"""Tile math, stitching, rendering, the chip cache and the settings, without Ray."""

import numpy as np
import pandas as pd
import pytest

from magseg_ray.chips.windows import ChipConfig, ChipTask
from magseg_ray.errors import ConfigError, TileRequestError
from magseg_ray.masks.schemas import get_schema
from magseg_ray.serve.cache import ChipCache
from magseg_ray.serve.settings import ServeSettings
from magseg_ray.serve.tiles import GridOffsets, Layer, classes_of_png, parse_tile, render_png, stitch_chips
from magseg_ray.stitch.mosaic import stitch_scene
from magseg_ray.run_files import RunFiles, chip_file, encode_chip


@pytest.mark.parametrize("z, x, y, words", [
    ("a", "0", "0", "integers"), ("25", "0", "0", "zoom must be within"), ("-1", "0", "0", "zoom must be within"),
    ("3", "8", "0", "within 0-7"), ("3", "0", "-1", "within 0-7"), ("11", "0", "0", "too coarse"),
])
def test_bad_tiles(z, x, y, words):
    with pytest.raises(TileRequestError, match=words):
        parse_tile(z, x, y, min_zoom=12)


def test_tile_geometry():
    t = parse_tile("19", "410689", "243046", 12)
    west, south, east, north = t.lnglat_bounds
    assert west < 102 < east + 0.01 and south < 13.0 < north + 0.01
    assert t.transform.a == pytest.approx((t.xy_bounds[2] - t.xy_bounds[0]) / 256)


def test_stitching_a_window_matches_map_region_stitching(tmp_path):
    """Chips pasted for a tile (a window of the scene) are exactly the scene raster map_region
    stitches from the same chips, cut to that window."""
    chip, h, w = ChipConfig(64, 16), 200, 170
    grid = GridOffsets(h, w, chip)
    rng = np.random.default_rng(0)
    files = RunFiles(str(tmp_path))
    outputs = {}
    for r in grid.rows:
        for c in grid.cols:
            classes = rng.integers(0, 3, (64, 64), dtype=np.uint8)
            conf = rng.random((2, 2)).astype(np.float32)
            outputs[(r, c)] = (classes, conf)
            files.write(chip_file(f"s/{r}_{c}"), encode_chip(classes, conf, 4, 0.0))
    full, full_conf, _ = stitch_scene(files, [f"s/{r}_{c}" for r, c in outputs], h, w, chip, 32)
    scene = {"id": "s", "uri": "", "crs": "EPSG:32648", "native_bounds": [0, 0, w, h], "width": w, "height": h}
    picked = [(r, c) for r, c in outputs if 48 <= r <= 144 and c >= 96]  # a window reaching the scene's edges
    tasks = [ChipTask(f"s/{r}_{c}", "s", "", "EPSG:32648", r, c, 64, (1, 0, c, 0, -1, h - r)) for r, c in picked]
    layer = Layer(scene, tasks=tasks)
    stitch_chips(layer, [outputs[k] for k in picked], chip, 32)
    r0, c0 = min(r for r, _ in picked), min(c for _, c in picked)
    rows, cols = layer.classes.shape
    inner = (slice(8, rows - 8 if r0 + rows < h else rows), slice(8, cols))  # the window's own edge: half an overlap
    assert np.array_equal(layer.classes[inner], full[r0:r0 + rows, c0:c0 + cols][inner])
    assert np.allclose(layer.confidence[inner], full_conf[r0:r0 + rows, c0:c0 + cols][inner])
    assert (layer.transform.c, layer.transform.f) == (c0, h - r0)
    assert (48, 96) in grid and (48, 95) not in grid and (h, 0) not in grid


def test_png_round_trip():
    schema = get_schema("fields3")
    classes = np.random.default_rng(1).integers(0, 3, (256, 256), dtype=np.uint8)
    classes[:10] = 255
    assert np.array_equal(classes_of_png(render_png(classes, schema), schema), classes)


def test_chip_cache_is_bounded_by_bytes_and_least_recently_used():
    value = (np.zeros((32, 32), np.uint8), np.zeros((1, 1), np.float32))  # 1028 bytes
    cache = ChipCache(3 * 1028)
    for i in range(3):
        cache.put(("s", i, 0, "m"), value)
    assert cache.get(("s", 0, 0, "m")) is not None  # 0 is now the most recent
    cache.put(("s", 3, 0, "m"), value)
    assert cache.get(("s", 1, 0, "m")) is None and cache.get(("s", 0, 0, "m")) is not None
    assert cache.stats()["chips"] == 3 and cache.stats()["evictions"] == 1
    assert cache.get(("s", 0, 0, "other model")) is None


def test_settings_from_builder_args_and_deployment_options():
    s = ServeSettings.from_args({"catalog": "c.parquet", "min_replicas": "1", "max_replicas": "4", "cpus_per_replica": "0.5"})
    options = s.deployment_options()
    assert options["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert options["max_queued_requests"] == 128 and options["backpressure_config"].status_code == 503
    assert ServeSettings(min_replicas=2, max_replicas=2).deployment_options()["num_replicas"] == 2
    with pytest.raises(ConfigError, match="unknown"):
        ServeSettings.from_args({"catalogue": "x"})
    with pytest.raises(ConfigError, match="not a int"):
        ServeSettings.from_args({"min_zoom": "high"})
    with pytest.raises(ConfigError, match="min_replicas"):
        ServeSettings(min_replicas=3, max_replicas=2)
    for bad in (-3, float("nan")):
        with pytest.raises(ConfigError, match="seed_px"):
            ServeSettings(seed_px=bad)


def test_every_setting_is_a_flag_of_the_job():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jobs" / "serve.py"
    spec = importlib.util.spec_from_file_location("serve_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert pd.Series(list(ServeSettings.__dataclass_fields__)).size >= 20


def _naip_layer_and_chips(tmp_path):
    """The demo NAIP scene (real pixels, 1 m) mapped as its truth fields (fields3 classes: interior,
    and boundary where two fields meet), written as ``map_region``'s chip files on the demo card's
    chip grid, and a :class:`Layer` of all its chips stitched as the tile server stitches them."""
    import rasterio
    from scipy import ndimage

    from magseg_ray.chips.windows import chip_windows
    from magseg_ray.map_region import DEMO_DIR
    from magseg_ray.scenes.catalog import load_catalog

    frame = load_catalog(DEMO_DIR / "scenes").scenes.query("id == 'naip_43p7840_m92p4228'")
    scene = frame.iloc[0].to_dict()
    with rasterio.open(scene["labels_uri"]) as src:
        labels = src.read(1).astype(np.int64)
    edge = (ndimage.maximum_filter(labels, 3) != ndimage.minimum_filter(labels, 3)) & (labels > 0)
    classes = np.where(labels > 0, np.where(edge, 2, 1), 0).astype(np.uint8)
    chip = ChipConfig.for_chip_size(256, 32)
    tasks = chip_windows(frame, scene["geometry"], chip)
    files, chips = RunFiles(str(tmp_path)), []
    for t in tasks:
        out = np.zeros((t.size, t.size), np.uint8)
        part = classes[t.row_off:t.row_off + t.size, t.col_off:t.col_off + t.size]
        out[:part.shape[0], :part.shape[1]] = part
        chips.append((out, np.ones((8, 8), np.float32)))
        files.write(chip_file(t.chip_id), encode_chip(*chips[-1], 64, 0.0))
    layer = Layer(scene, tasks=tasks)
    stitch_chips(layer, chips, chip, 32)
    return layer, files, chip


def test_tile_fields_are_map_regions_fields_with_the_cards_rules(tmp_path):
    """A tile whose chips are all of its scene's: its fields are exactly the fields map_region's fields
    step (``reduce_scene``: the model card's rules, the edge split on the scene's pixels) writes,
    clipped to the tile; the card's ``field_min_m2`` acts on them (no piece under it is left)."""
    import dataclasses

    import shapely

    from magseg_ray.fields.reduce import PARTIAL, reduce_scene
    from magseg_ray.fields.rules import resolve_rules
    from magseg_ray.fields.write import read_fields
    from magseg_ray.map_region import MapConfig
    from magseg_ray.model.card import read_model_prompt
    from magseg_ray.serve.tiles import TMS, Tile, tile_fields

    layer, files, chip = _naip_layer_and_chips(tmp_path)
    card = read_model_prompt(MapConfig().model_dir())  # the demo model's card: every rule and the edge split on
    rules = resolve_rules(card)
    assert rules.min_m2 and rules.hole_m2 and rules.simplify_m and rules.edge_quantile
    scene, schema, seed = layer.scene, get_schema(card.schema), card.field_seed_px
    assert layer.classes.shape == (scene["height"], scene["width"])  # the window is the whole scene
    centre = scene["geometry"].centroid
    tile = Tile(*(lambda t: (t.z, t.x, t.y))(TMS.tile(centre.x, centre.y, 16)))
    served = tile_fields([layer], tile, schema, 1.0, 16, seed, rules)

    owned = scene["geometry"]
    row = {k: v for k, v in scene.items() if k != "geometry"}
    reduce_scene(row, [t.chip_id for t in layer.tasks], owned, shapely.Polygon(), files.root, None, chip, card.prompt(),
                 1.0, 16, seed, 1.0, rules)
    mapped = read_fields(files, PARTIAL)
    mapped = mapped.assign(geometry=shapely.intersection(mapped.geometry.values, tile.footprint & owned))
    mapped = mapped[~mapped.geometry.is_empty]
    assert len(served) >= 20 and len(served) == len(mapped)
    want = dict(zip(mapped["id"].str.replace(scene["id"] + "-", ""), mapped.geometry))
    for fid, geom in zip(served["id"].str.replace(scene["id"] + "-tile-", ""), served.geometry):
        assert shapely.symmetric_difference(geom, want[fid]).area <= 1e-9 * geom.area, fid

    big = resolve_rules(dataclasses.replace(card, field_min_m2=20_000))
    fields = tile_fields([layer], tile, schema, 1.0, 16, seed, big)
    assert 0 < len(fields) < len(served) and (fields["pixels"] >= 20_000).all()  # 1 m pixels


def test_a_windows_image_reaches_past_it_as_the_whole_scene_does(tmp_path):
    """The edge split's pixels for a window of a scene (the scene's top-left corner): the scene's own
    beyond the window, mirrored past the scene's edge, as SciPy mirrors the whole scene."""
    from rasterio.transform import Affine

    from magseg_ray.chips.read import read_window
    from magseg_ray.fields.edges import reach_px
    from magseg_ray.fields.rules import FieldRules
    from magseg_ray.serve.tiles import window_image

    layer, _, _ = _naip_layer_and_chips(tmp_path)
    scene = layer.scene
    whole, _ = read_window(scene["uri"], 0, 0, scene["height"], scene["width"])
    rules = FieldRules(edge_quantile=0.85, edge_sigma_m=3.0)
    m = reach_px(3.0)  # 1 m pixels
    assert m == 12 and window_image(layer, FieldRules()) is None  # no edge split: no read
    r0, c0, h, w = 0, 300, 200, 250
    window = Layer(scene, classes=layer.classes[r0:r0 + h, c0:c0 + w],
                   transform=layer.transform @ Affine.translation(c0, r0))
    got = window_image(window, rules)
    mirrored = np.pad(whole, ((m, m), (m, m), (0, 0)), mode="symmetric")
    assert np.array_equal(got, mirrored[r0:r0 + h + 2 * m, c0:c0 + w + 2 * m])
