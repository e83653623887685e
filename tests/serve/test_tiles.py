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
