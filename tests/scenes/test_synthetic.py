import importlib.util
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from scipy import ndimage

from magseg_ray.errors import ConfigError
from magseg_ray.scenes.synthetic import (
    CLOUD,
    FIELD,
    POND,
    TREE,
    WELL,
    SyntheticConfig,
    make_scene,
    write_scene,
)

REPO = Path(__file__).resolve().parents[2]
BUSY = dict(cloud_probability=1.0, ponds_per_ha=4.0, wells_per_ha=8.0, houses_per_ha=8.0, field_fraction=0.7)
"""Densities high enough that a small scene holds every kind of object."""


@pytest.fixture(scope="module")
def scene():
    """A 512 px (256 m) scene with every kind of object, clouds included."""
    return make_scene(SyntheticConfig(seed=7, size_px=512, **BUSY))


@pytest.fixture(scope="module")
def written(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    return out, write_scene(scene, out, "synth_7")


def _job():
    spec = importlib.util.spec_from_file_location("make_synthetic_job", REPO / "jobs/make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_seed_same_scene_and_other_seed_other_scene():
    a, b, c = (make_scene(SyntheticConfig(seed=s, size_px=256, **BUSY)) for s in (3, 3, 4))
    for name in ("image", "instances", "classes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert not np.array_equal(getattr(a, name), getattr(c, name)), name


def test_arrays_have_the_documented_types(scene):
    assert scene.image.shape == (512, 512, 3) and scene.image.dtype == np.uint8
    assert scene.instances.dtype == np.uint16 and scene.classes.dtype == np.uint8
    assert scene.image.std() > 10  # not flat


def test_field_areas_lie_within_the_bounds_and_most_fields_are_small():
    """Every field (edge-clipped ones included) has at least the smallest area, since smaller
    pieces are dropped, and at most the largest, since the layout cuts pieces below 0.9 x that
    and the warp moves edges by a few pixels only. Most fields are small: under 2000 m²."""
    cfg = SyntheticConfig(seed=11, size_px=768)
    inst = make_scene(cfg).instances
    ids = np.unique(inst[inst > 0])
    assert np.array_equal(ids, np.arange(1, ids.size + 1))  # 1..n
    areas = np.bincount(inst.ravel())[1:] * cfg.gsd**2
    lo, hi = cfg.field_area_m2
    assert ids.size > 50
    assert lo <= areas.min() and areas.max() <= hi
    assert np.median(areas) < 2_000 and np.mean(areas < 2_000) > 0.7
    assert areas.max() > 4 * np.median(areas)  # sizes vary


def test_each_field_is_one_4_connected_piece(scene):
    inst = scene.instances
    for k, sl in enumerate(ndimage.find_objects(inst), start=1):
        assert ndimage.label(inst[sl] == k)[1] == 1, k


def test_fields_touch(scene):
    inst = scene.instances.astype(np.int64)
    pairs = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1], inst[1:])):
        touch = (a > 0) & (b > 0) & (a != b)
        pairs |= set(zip(a[touch].tolist(), b[touch].tolist()))
    assert len({tuple(sorted(p)) for p in pairs}) >= inst.max()  # about as many shared edges as fields


def test_classes_agree_with_instances(scene):
    inst, cls = scene.instances, scene.classes
    assert set(np.unique(cls)) == {0, FIELD, TREE, CLOUD, POND, WELL}
    assert np.array_equal(cls == FIELD, (inst > 0) & (cls != CLOUD))  # field unless under cloud
    assert (cls[inst > 0] == CLOUD).any()


def test_cogs_are_tiled_georeferenced_and_tagged(written, scene):
    out, paths = written
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())  # no temp files
    expected = {
        "image": ("uint8", 3, None, None),
        "labels": ("uint16", 1, "instance", scene.instances),
        "classes": ("uint8", 1, "class", scene.classes),
    }
    for key, (dtype, count, kind, data) in expected.items():
        with rasterio.open(paths[key]) as src:
            assert src.driver == "GTiff" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256) and src.overviews(1) == [2]
            assert (src.dtypes[0], src.count) == (dtype, count)
            assert src.crs.to_epsg() == 32648 and src.res == (0.5, 0.5)
            assert tuple(src.bounds) == (500_000, 1_400_000 - 256, 500_000 + 256, 1_400_000)
            assert src.tags().get("MAGSEG_KIND") == kind
            if data is not None:
                assert np.array_equal(src.read(1), data)
    with rasterio.open(paths["image"]) as src:
        assert src.compression.name == "jpeg"
        assert src.tags()["TIFFTAG_DATETIME"] == "2024:01:15 03:30:00"
        assert src.tags()["ACQUISITION_DATETIME"] == "2024-01-15T03:30:00Z"
        assert np.abs(src.read().transpose(1, 2, 0).astype(int) - scene.image).mean() < 4  # JPEG


def test_polygons_rasterize_back_to_the_instances(written, scene):
    _, paths = written
    fields = gpd.read_file(paths["fields"])
    assert fields.crs.to_epsg() == 32648 and fields.is_valid.all()
    assert sorted(fields.field_id) == list(range(1, scene.instances.max() + 1))
    shapes = zip(fields.geometry, fields.field_id)
    burnt = rasterize(shapes, out_shape=scene.instances.shape, transform=scene.transform, dtype="uint16")
    assert (burnt == scene.instances).mean() > 0.99


@pytest.mark.parametrize(
    "bad",
    [
        dict(size_px=8),
        dict(gsd=0),
        dict(field_area_m2=(500, 100)),
        dict(field_fraction=1.5),
        dict(ponds_per_ha=-1),
        dict(crs="EPSG:4326"),
        dict(crs="nonsense"),
        dict(datetime="yesterday"),
    ],
)
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError):
        SyntheticConfig(**bad)


def test_cli_writes_scenes_and_resumes(tmp_path, capsys):
    job = _job()
    assert job.main([str(tmp_path), "--count", "2", "--seed", "5", "--size-px", "128"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert first == ["[1/2] synth_5: written", "[2/2] synth_6: written"]
    assert len(list(tmp_path.iterdir())) == 8
    stamp = (tmp_path / "synth_5.tif").stat().st_mtime_ns
    assert job.main([str(tmp_path), "--count", "3", "--seed", "5", "--size-px", "128"]) == 0
    second = capsys.readouterr().out.splitlines()
    skipped = [f"[{i}/3] synth_{i + 4}: exists, skipped" for i in (1, 2)]
    assert second == skipped + ["[3/3] synth_7: written"]
    assert (tmp_path / "synth_5.tif").stat().st_mtime_ns == stamp


def test_cli_reports_bad_parameters(tmp_path, capsys):
    assert _job().main([str(tmp_path), "--size-px", "4"]) == 2
    assert capsys.readouterr().err.startswith("error: synthetic scene: size_px")


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def fail(frame, path, **kwargs):
        Path(path).write_text("half a GeoPackage")
        raise OSError("disk full")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        write_scene(make_scene(SyntheticConfig(size_px=64)), tmp_path, "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.classes.tif", "s.labels.tif", "s.tif"]
