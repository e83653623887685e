from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from magseg_ray.chips.read import ReadConfig, read_chip, read_window
from magseg_ray.chips.windows import ChipTask
from magseg_ray.errors import SceneError

SCENE = "tests/data/naip/naip_44p0347_m93p8702.tif"  # 1037 x 1033 px, EPSG:32615


def task_for(uri, row, col, size, crs="EPSG:32615", transform=(1, 0, 0, 0, -1, 0)):
    return ChipTask(f"s/{row}_{col}", "s", str(uri), crs, row, col, size, transform)


def test_interior_chip_equals_a_direct_read():
    chip = read_chip(task_for(SCENE, 256, 512, 256))
    with rasterio.open(SCENE) as src:
        direct = np.moveaxis(src.read(window=Window(512, 256, 256, 256)), 0, -1)
    assert np.array_equal(chip.image, direct) and chip.valid.all()


def test_edge_chip_is_padded_and_marked_invalid():
    chip = read_chip(task_for(SCENE, 768, 768, 512))  # runs past the right and bottom edges
    assert chip.image.shape == (512, 512, 3)
    assert chip.valid[: 1033 - 768, : 1037 - 768].all() and not chip.valid[1033 - 768 :].any()
    assert not chip.valid[:, 1037 - 768 :].any() and (chip.image[~chip.valid] == 0).all()


def write(path, data, nodata=None, crs="EPSG:32648"):
    bands, h, w = data.shape
    with rasterio.open(path, "w", driver="COG", width=w, height=h, count=bands, dtype=data.dtype,
                       crs=crs, transform=from_origin(500000, 1400000, 0.5, 0.5), nodata=nodata) as dst:
        dst.write(data)
    return path


def test_uint16_four_band_scene_is_scaled_by_its_bit_depth_in_the_bands_asked(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(200, 4000, (4, 256, 256)).astype(np.uint16)
    path = write(tmp_path / "b16.tif", data)
    cfg = ReadConfig(bands=(3, 2, 1), bit_depth=12)
    a = read_chip(task_for(path, 128, 128, 128, "EPSG:32648"), cfg)
    want = np.rint(data[[2, 1, 0], 128:, 128:] * (255 / 4095)).astype(np.uint8)
    assert np.array_equal(a.image, np.moveaxis(want, 0, -1)) and a.valid.all()
    # no NBITS and no --bit-depth: the pixel type's 16 bits
    b = read_chip(task_for(path, 128, 128, 128, "EPSG:32648"), ReadConfig(bands=(3, 2, 1)))
    assert np.array_equal(b.image, np.moveaxis(np.rint(data[[2, 1, 0], 128:, 128:] * (255 / 65535)), 0, -1))
    with pytest.raises(SceneError, match="bands"):
        read_chip(task_for(path, 0, 0, 128, "EPSG:32648"), ReadConfig(bands=(5, 2, 1)))


def test_nodata_pixels_are_invalid(tmp_path):
    data = np.full((3, 64, 64), 90, np.uint8)
    data[:, :10] = 0
    chip = read_chip(task_for(write(tmp_path / "nd.tif", data, nodata=0), 0, 0, 64, "EPSG:32648"))
    assert not chip.valid[:10].any() and chip.valid[10:].all()


def test_bad_scenes(tmp_path):
    with pytest.raises(SceneError, match="unsupported dtype float32"):
        read_chip(task_for(write(tmp_path / "f.tif", np.zeros((3, 32, 32), np.float32)), 0, 0, 32))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff" * 100)
    with pytest.raises(SceneError, match="cannot read chip s/0_0 from .*junk.tif"):
        read_chip(task_for(tmp_path / "junk.tif", 0, 0, 32))
    with pytest.raises(SceneError, match="missing.tif"):
        read_chip(task_for(tmp_path / "missing.tif", 0, 0, 32))


def test_an_object_store_outage_is_retried_and_named_by_its_first_cause(s3_server, monkeypatch):
    """The store goes away and comes back within GDAL's retry settings: the chips read. Away for good:
    every chip's error names the connection failure (not GDAL's cached "does not exist")."""
    import threading

    uri = s3_server.upload(SCENE, "read-tests", "outage") + f"/{Path(SCENE).name}"
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "4")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.5")
    want, _ = read_window(uri, 0, 0, 64, 64, store=s3_server.store)
    s3_server.stop()
    try:
        with pytest.raises(SceneError) as down:
            read_window(uri, 960, 960, 64, 64, store=s3_server.store, name="chip a")
        with pytest.raises(SceneError) as again:
            read_window(uri, 960, 0, 64, 64, store=s3_server.store, name="chip b")
    finally:
        restart = threading.Timer(2.0, s3_server.start)
        restart.start()
    for e in (down.value, again.value):  # 0.5 + 1 + 2 + 4 s of retries each, then the first cause
        first = str(e).split("(still failing")[0]
        assert "does not answer: Connection refused" in first and "does not exist" not in first, str(e)
    got, _ = read_window(uri, 0, 0, 64, 64, store=s3_server.store)  # down at first, back after 2 s
    restart.join()
    assert np.array_equal(got, want)
