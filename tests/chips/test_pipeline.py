"""Both Ray Data pipelines end to end against a real S3 HTTP endpoint (moto on 127.0.0.1)."""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import shapely.affinity
from rasterio.windows import Window

from magseg_ray.chips.pipeline import (
    failures,
    mapping_chips,
    patch_records,
    split_of,
    training_chips,
    validation_patches,
    write_shards,
)
from magseg_ray.chips.windows import ChipConfig
from magseg_ray.errors import ConfigError
from magseg_ray.masks.schemas import classes_from_instances
from magseg_ray.prompt import PromptConfig
from magseg_ray.rle.codec import decode
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.scenes.synthetic import SyntheticConfig, make_scene, write_scene

DATA = "tests/data/naip"


@pytest.fixture(scope="module")
def s3_scenes(s3_server, tmp_path_factory):
    local = tmp_path_factory.mktemp("scenes")
    for f in ("naip_44p0347_m93p8702", "naip_43p4066_m83p6220"):
        for suffix in (".tif", ".labels.tif", ".fields.gpkg"):
            shutil.copy(f"{DATA}/{f}{suffix}", local)
    # a synthetic smallholder scene at 0.5 m in a third CRS (UTM 48N)
    write_scene(make_scene(SyntheticConfig(seed=3, size_px=512)), local, "synth_3")
    (local / "synth_3.classes.tif").unlink()
    root = s3_server.upload(local, "scenes", "naip")
    return load_catalog(root, s3_server.store).scenes, local


def local_window(path, row, col, size, bands=None):
    with rasterio.open(path) as src:
        return src.read(bands, window=Window(col, row, size, size), boundless=True, fill_value=0)


def test_mapping_pipeline_reads_chips_pixel_for_pixel(ray_cluster, s3_server, s3_scenes):
    scenes, local = s3_scenes
    aoi = shapely.union_all([shapely.affinity.scale(g, 0.8, 0.8) for g in scenes.geometry])
    sent = s3_server.sent_bytes
    records = mapping_chips(scenes, aoi, ChipConfig(256, 32), store=s3_server.store).take_all()
    assert {r["crs"] for r in records} == {"EPSG:32615", "EPSG:32617", "EPSG:32648"} and not failures(records)
    assert s3_server.sent_bytes > sent  # pixels came over HTTP
    for r in records:
        direct = np.moveaxis(local_window(local / f"{r['scene_id']}.tif", r["row_off"], r["col_off"], 256), 0, -1)
        assert np.array_equal(r["image"], direct)  # pixels past the scene edge are 0 in both
        valid = r["valid"]
        # patch tasks: exactly the 32 px patches holding a valid (in-scene, in-AOI) pixel
        cells = valid.reshape(8, 32, 8, 32).any(axis=(1, 3))
        expected = {(32 * j, 32 * i) for i, j in zip(*np.nonzero(cells))}
        assert {(int(x0), int(y0)) for x0, y0, *_ in r["patches"]} == expected
    assert any(not r["valid"].all() for r in records)  # the AOI clips some chips


def test_a_bad_scene_is_recorded_and_the_rest_go_on(ray_cluster, s3_server, s3_scenes, tmp_path):
    scenes, _ = s3_scenes
    broken = scenes.copy()
    broken.loc[broken.index[0], "uri"] = "s3://scenes/naip/does-not-exist.tif"
    aoi = shapely.union_all(list(scenes.geometry))
    records = mapping_chips(broken, aoi, ChipConfig(512, 0), store=s3_server.store).take_all()
    bad = failures(records)
    assert bad and all("does-not-exist.tif" in f["error"] for f in bad)
    assert any(r["error"] is None and r["image"].size for r in records)
    assert all(r["image"].size == 0 and len(r["patches"]) == 0 for r in records if r["error"])


def test_training_pipeline_records_match_the_labels(ray_cluster, s3_server, s3_scenes, tmp_path):
    scenes, local = s3_scenes
    prompt = PromptConfig()
    ds = training_chips(scenes, None, ChipConfig(256, 0), prompt, store=s3_server.store, val_fraction=0.5)
    chips = ds.take_all()
    assert not failures(chips)
    assert {c["split"] for c in chips} == {split_of(s, 0.5) for s in scenes["id"]}
    assert all(c["split"] == split_of(c["scene_id"], 0.5) for c in chips)  # by scene
    order = [c["scene_id"] for c in chips]  # chips come shuffled, not scene after scene
    assert sum(a != b for a, b in zip(order, order[1:])) > len(set(order)) - 1
    # targets equal the classes derived from the whole scene's instance raster
    for scene_id in ("naip_44p0347_m93p8702", "synth_3"):  # real and synthetic
        chip = next(c for c in chips if c["chip_id"] == f"{scene_id}/256_256")
        with rasterio.open(local / f"{scene_id}.labels.tif") as src:
            scene_classes = classes_from_instances(src.read(1), "fields3")
        records = patch_records(chip, prompt)
        assert len(records) == 64
        for r in records:
            x0, y0, x1, y1 = r["box"]
            mask, report = decode(r["target"], 32, 32, "fields3", strict=True)
            assert np.array_equal(mask, scene_classes[256 + y0 : 256 + y1, 256 + x0 : 256 + x1])
            assert r["images"][0].shape == (256, 256, 3) and r["prompt"].endswith("<start_of_turn>model\n")
        direct = np.moveaxis(local_window(local / f"{scene_id}.tif", 256, 256, 256), 0, -1)
        assert np.array_equal(records[0]["images"][0], direct)

    # a wider boundary: chip classes still equal those of the whole scene, at the new width, so a
    # gap between fields read across a chip edge is marked as in the scene
    naip = scenes[scenes["id"] == "naip_44p0347_m93p8702"]
    wide = training_chips(naip, None, ChipConfig(256, 0), PromptConfig(boundary_width=6), store=s3_server.store)
    with rasterio.open(local / "naip_44p0347_m93p8702.labels.tif") as src:
        inst = src.read(1)
    thin, thick = classes_from_instances(inst, "fields3"), classes_from_instances(inst, "fields3", 6)
    assert (thick == 2).sum() > 3 * (thin == 2).sum()
    for c in wide.take_all():
        r, col = map(int, c["chip_id"].split("/")[1].split("_"))
        want = thick[r : r + 256, col : col + 256]
        got = c["classes"][: want.shape[0], : want.shape[1]]
        assert np.array_equal(got, want), c["chip_id"]

    # Parquet shards, locally and on the object store, hold the same chips
    write_shards(ds, str(tmp_path / "shards"))
    assert pq.read_table(tmp_path / "shards").num_rows == len(chips)
    fs = s3_server.store.filesystem("s3://scenes")
    write_shards(ds, "scenes/shards", filesystem=fs)
    assert sum(pq.ParquetFile(fs.open(p)).metadata.num_rows for p in fs.glob("scenes/shards/*.parquet")) == len(chips)


def test_training_needs_labels(s3_scenes):
    scenes, _ = s3_scenes
    with pytest.raises(ConfigError, match="the catalogued scenes hold no labelled scene: give --labels FILE"):
        training_chips(scenes.assign(labels_uri=None, fields_uri=None), None)
    with pytest.raises(ConfigError, match="schema 'alu' needs class rasters"):
        training_chips(scenes, None, prompt=PromptConfig(schema="alu"))


def test_validation_patches_read_on_past_chips_that_hold_no_whole_patch(ray_cluster):
    """A scene's edge chip can hold no whole patch; asking for 4 patches used to take one chip."""
    import io

    import ray
    from PIL import Image

    from magseg_ray.masks.schemas import NO_DATA

    def chip(name: str, classes: np.ndarray) -> dict:
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(buf, format="PNG")
        return {"chip_id": name, "scene_id": "s", "split": "val", "error": None, "chip_png": buf.getvalue(),
                "classes": classes}

    edge = np.full((64, 64), NO_DATA, np.uint8)
    edge[:, :20] = 1  # valid pixels, but no whole 32 px patch
    chips = [chip("edge", edge), chip("a", np.ones((64, 64), np.uint8)), chip("b", np.zeros((64, 64), np.uint8))]
    ds = ray.data.from_items(chips, override_num_blocks=1)
    four = validation_patches(ds, 4)
    assert len(four) == 4 and {r["chip_id"] for r in four} == {"a"}
    assert len({r["box"] for r in four}) == 4
    assert [r["box"] for r in validation_patches(ds, 4)] == [r["box"] for r in four]  # a fixed shuffle
    assert {r["chip_id"] for r in validation_patches(ds, 8)} == {"a", "b"}  # 8 // 8 chips, then on until 8 patches
    assert len(validation_patches(ds, 20)) == 8  # the dataset ran out
