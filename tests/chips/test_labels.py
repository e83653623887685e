"""Labels as users hold them: one polygon layer for many scenes, in another CRS, trains and scores as
the scenes' own instance rasters do (magseg_ray.chips.labels); bad label files are named."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from magseg_ray.chips.labels import labelled_scenes, read_labelled_scene
from magseg_ray.chips.pipeline import read_chip_classes, training_chips
from magseg_ray.chips.windows import ChipConfig, chip_windows
from magseg_ray.errors import ConfigError
from magseg_ray.masks.schemas import classes_from_instances
from magseg_ray.prompt import PromptConfig
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.train.demo_data import pack_scenes, unpack_scenes

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data/naip"
SCENES = ("naip_43p4066_m83p6220", "naip_44p0347_m93p8702")  # UTM 17N and 15N


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``raster``: the scenes with their .labels.tif; ``bare``: the same scenes alone, and
    ``fields.gpkg`` outside it: every scene's fields in one layer, in EPSG:4326."""
    root = tmp_path_factory.mktemp("labels")
    raster, bare = root / "raster", root / "bare"
    raster.mkdir(), bare.mkdir()
    for scene in SCENES:
        shutil.copy2(DATA / f"{scene}.tif", raster), shutil.copy2(DATA / f"{scene}.labels.tif", raster)
        shutil.copy2(DATA / f"{scene}.tif", bare)
    layers = [gpd.read_file(DATA / f"{s}.fields.gpkg").to_crs("EPSG:4326").assign(scene=s) for s in SCENES]
    gpd.GeoDataFrame(pd.concat(layers, ignore_index=True), crs="EPSG:4326").to_file(root / "fields.gpkg")
    return {"raster": raster, "bare": bare, "gpkg": root / "fields.gpkg", "root": root}


def test_a_folder_of_scenes_without_labels_is_refused_by_name(folders):
    with pytest.raises(ConfigError, match=r"'bare' hold no labelled scene: give --labels FILE .*2 scenes catalogued"):
        labelled_scenes(load_catalog(folders["bare"]).scenes, where="'bare'")


def test_one_layer_in_another_crs_gives_every_chip_the_classes_of_the_rasters(folders):
    raster = labelled_scenes(load_catalog(folders["raster"]).scenes)
    vector = labelled_scenes(load_catalog(folders["bare"]).scenes, str(folders["gpkg"]))
    assert list(vector["labels"]) == [str(folders["gpkg"])] * 2
    prompt = PromptConfig()
    for which in (raster, vector):
        which["tasks"] = [chip_windows(which.iloc[[i]], which.iloc[[i]].union_all(), ChipConfig(256, 0))
                          for i in range(len(which))]
    checked = 0
    for (_, a), (_, b) in zip(raster.iterrows(), vector.iterrows()):
        for ta, tb in zip(a["tasks"], b["tasks"]):
            ca = read_chip_classes(a["labels"], ta, prompt, None)
            cb = read_chip_classes(b["labels"], tb, prompt, None)
            assert np.array_equal(ca, cb), ta.chip_id
            checked += 1
    assert checked == 50


def test_pack_from_a_polygon_file_equals_pack_from_the_rasters(folders):
    pack_scenes(str(folders["raster"]), folders["root"] / "p_raster")
    pack_scenes(str(folders["bare"]), folders["root"] / "p_vector", labels=str(folders["gpkg"]))
    a, b = unpack_scenes(folders["root"] / "p_raster", 6), unpack_scenes(folders["root"] / "p_vector", 6)
    assert [len(a[s]) for s in a] == [len(b[s]) for s in b] and sum(len(v) for v in a.values()) == 2
    for split in a:
        for (ia, ca), (ib, cb) in zip(a[split], b[split]):
            assert np.array_equal(ia, ib) and np.array_equal(ca, cb)


def test_training_chips_from_a_polygon_file(ray_cluster, folders):
    """The Ray Data training stage (SFT's and GRPO's input) takes ``--labels``: same records."""
    scenes = load_catalog(folders["bare"]).scenes
    chips = training_chips(scenes, None, ChipConfig(256, 0), labels=str(folders["gpkg"])).take_all()
    want = training_chips(load_catalog(folders["raster"]).scenes, None, ChipConfig(256, 0)).take_all()
    assert len(chips) == len(want) == 50 and not any(c["error"] for c in chips)
    by_id = {c["chip_id"]: c for c in want}
    for c in chips:
        assert np.array_equal(c["classes"], by_id[c["chip_id"]]["classes"])


def test_a_scene_alone_reads_whole_with_its_gpkg_sidecar():
    """A scene with only its <id>.fields.gpkg beside it is labelled (the sidecar is rasterised)."""
    scenes = labelled_scenes(load_catalog(ROOT / "magseg_ray/assets/demo/scenes").scenes)
    row = next(scenes.itertuples())
    _, instances = read_labelled_scene(row._replace(labels=row.fields_uri))
    import rasterio

    with rasterio.open(row.labels_uri) as src:
        assert np.array_equal(instances, src.read(1))


def test_evaluate_takes_one_layer_for_many_scenes_in_another_crs(folders, tmp_path):
    scene = SCENES[1]
    run = lambda truth: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "jobs/evaluate.py"), "--pred", str(DATA / f"{scene}.labels.tif"),
         "--labels", str(truth)], capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    own, shared = run(DATA / f"{scene}.fields.gpkg"), run(folders["gpkg"])
    assert own.returncode == shared.returncode == 0, own.stderr + shared.stderr
    a, b = (json.loads(r.stdout.splitlines()[-1]) for r in (own, shared))
    assert a.pop("truth") != b.pop("truth") and a == b
    assert a["instance"]["field"]["mean_iou"] == 1.0 and a["object"]["field"]["f1"] == 1.0


@pytest.mark.parametrize("layer, error", [
    (gpd.GeoDataFrame(geometry=[shapely.box(10, 10, 11, 11)], crs="EPSG:4326"),
     r"labels '.*': its 1 polygons \(lon 10.0000 to 11.0000, lat 10.0000 to 11.0000\) cover none of the 2 scenes"),
    (gpd.GeoDataFrame(geometry=[shapely.Point(-93.87, 44.03)], crs="EPSG:4326"),
     r"labels '.*': holds Point geometries; field labels must be polygons"),
    (gpd.GeoDataFrame(geometry=[shapely.box(-93.88, 44.03, -93.86, 44.04)]),
     r"labels '.*': has no CRS"),
])
def test_bad_label_files_are_named(folders, tmp_path, layer, error):
    path = tmp_path / "bad.gpkg"
    layer.to_file(path)
    with pytest.raises(ConfigError, match=error):
        labelled_scenes(load_catalog(folders["bare"]).scenes, str(path))
    with pytest.raises(ConfigError, match=r"labels '.*nothing.gpkg': cannot be read"):
        labelled_scenes(load_catalog(folders["bare"]).scenes, str(tmp_path / "nothing.gpkg"))
