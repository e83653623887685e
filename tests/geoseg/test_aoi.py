"""jobs/geoseg.py --aoi: a query over the three demo scenes on a local Ray with the tiny presets
(random weights: the objects are meaningless, the flow around them is what is tested), its resume,
bad input, and the field route from a map_region run's fields."""

import json
import shutil
from pathlib import Path

import geopandas as gpd
import pytest

from magseg_ray.fields.write import to_fiboa, write_partitions
from magseg_ray.map_region import DEMO_DIR
from magseg_ray.run_files import RunFiles
from magseg_ray.scenes.catalog import build_catalog
from tests.geoseg.test_job import job

AOI = DEMO_DIR / "demo.geojson"
SCENES = ("naip_43p7840_m92p4228", "synth_900", "synth_901")


def run(argv, capsys):
    code = job().main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def models(presets) -> list:
    """Route A (CLIP Surgery + SAM3 tracker) and route B (SAM3), no grounder: each chip is the box."""
    return ["--clip", presets["clip"], "--points", presets["sam3_tracker"], "--sam3", presets["sam3"],
            "--text-score-threshold", "0"]


def read_map(out: Path):
    objects = gpd.read_file(out / "fields.gpkg", layer="fields").sort_values("id").reset_index(drop=True)
    return objects, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_an_aoi_query_maps_the_three_demo_scenes_and_a_killed_run_resumes_to_the_same_map(
        ray_cluster, geoseg_presets, tmp_path, capsys):
    argv = ["--aoi", AOI, "--query", "the field", "--chip-size", "256", "--address", ray_cluster.address,
            *models(geoseg_presets)]
    code, out, err = run([*argv, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    objects, summary = read_map(tmp_path / "a")
    assert summary["status"] == "complete" and summary["scenes"] == 3 and summary["chips"] == 27
    assert summary == json.loads(out.splitlines()[-1])
    assert objects.crs.to_epsg() == 4326 and len(objects) == summary["fields"] > 0
    assert set(objects["scene_id"].str.split("+").explode()) == set(SCENES)
    assert (objects["query"] == "the field").all() and (objects["class"] == "object").all()
    assert set(objects["route"]) <= {"both", "points", "text"} and objects["phrase"].notna().all()
    assert objects["score"].between(0, 1).all() and objects.geometry.is_valid.all()
    assert len(gpd.read_parquet(tmp_path / "a" / "fields")) == len(objects)
    # a run killed after some chips were written: the rerun maps the rest, and the map is the same
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    chips = sorted((tmp_path / "b" / "chips").rglob("*.npz"))
    for f in chips[::2]:
        f.unlink()
    for name in ("fields.gpkg", "summary.json", "fields"):
        shutil.rmtree(tmp_path / "b" / name) if name == "fields" else (tmp_path / "b" / name).unlink()
    code, _, err = run([*argv, "--out", tmp_path / "b"], capsys)
    again, summary_b = read_map(tmp_path / "b")
    assert code == 0 and summary_b["chips_resumed"] == 27 - len(chips[::2]), err
    assert list(again["id"]) == list(objects["id"]) and list(again["route"]) == list(objects["route"])
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(again.geometry, objects.geometry))
    # the same folder for another query is refused, nothing in it lost
    code, _, err = run([*argv[:3], "the pond", *argv[4:], "--out", tmp_path / "b"], capsys)
    assert code == 2 and "different query" in err and len(list((tmp_path / "b" / "chips").rglob("*.npz"))) == 27


@pytest.mark.slow
def test_chips_of_a_scene_that_cannot_be_read_make_the_map_partial(ray_cluster, geoseg_presets, tmp_path, capsys):
    scenes = shutil.copytree(DEMO_DIR / "scenes", tmp_path / "scenes")
    catalog = build_catalog(scenes).save(tmp_path / "catalog.parquet")
    broken = scenes / f"{SCENES[0]}.tif"
    data = broken.read_bytes()
    broken.write_bytes(data[:2000] + b"\xab" * (len(data) - 2000))  # tiles destroyed after cataloguing
    code, _, err = run(["--aoi", AOI, "--catalog", catalog, "--query", "the field", "--chip-size", "256",
                        "--routes", "text", "--address", ray_cluster.address, *models(geoseg_presets),
                        "--out", tmp_path / "out"], capsys)
    objects, summary = read_map(tmp_path / "out")
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert code == 3 and summary["status"] == "partial" and "partial map" in err
    assert summary["chips_failed"] == len(failures) > 0 and {f["scene_id"] for f in failures} == {SCENES[0]}
    assert set(objects["scene_id"].str.split("+").explode()) <= set(SCENES[1:]) and len(objects) > 0


@pytest.mark.parametrize("argv, message", [
    (["--query", " "], "query is empty"),
    (["--query", "field", "--chip-size", "100"], "--chip-size 100: must be a multiple of 32"),
    (["--query", "field", "--aoi", "MISSING"], "missing.geojson' cannot be read"),
    (["--query", "field", "SCENE"], "give SCENE or --aoi, not both"),
    (["--query", "the largest field", "--fields-run", "RUN"], "asks for something else"),
    (["--query", "fields", "--fields-run", "EMPTY"], "holds no finished map_region run"),
    (["--query", "field", "--out", "FILE"], "is a file"),
])
def test_bad_aoi_input_is_a_clear_error_before_ray_starts(geoseg_presets, tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    names = {"MISSING": tmp_path / "missing.geojson", "SCENE": DEMO_DIR / "scenes" / "synth_900.tif",
             "RUN": tmp_path / "empty", "EMPTY": tmp_path / "empty", "FILE": tmp_path / "file"}
    argv = [str(names.get(a, a)) for a in argv]
    base = ["--aoi", AOI, "--out", tmp_path / "out", *models(geoseg_presets)]
    code, _, err = run([*base, *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def fields_run(root: Path, status: str) -> Path:
    """A map_region run's folder as its reducer leaves it: fiboa fields/ partitions and summary.json
    (here the synthetic scene's true fields, standing in for mapped ones)."""
    truth = gpd.read_file(DEMO_DIR / "scenes" / "synth_900.fields.gpkg").to_crs("EPSG:4326")
    truth = truth.assign(scene_id="synth_900", confidence=0.8, pixels=100)
    files = RunFiles(str(root))
    ids = [f"synth_900-{i:06d}" for i in range(len(truth))]
    write_partitions(files, "fields", to_fiboa(truth, ids, "field", {"synth_900": None}), "synth_900", 1.0)
    files.write("summary.json", json.dumps({"status": status}))
    files.write("failures.json", json.dumps([{"chip_id": "synth_900/0_0", "scene_id": "synth_900", "error": "x"}]
                                            if status == "partial" else []))
    return root


@pytest.mark.parametrize("status, code", [("complete", 0), ("partial", 3)])
def test_a_fields_query_is_answered_from_a_map_region_run_without_decoding(tmp_path, capsys, status, code):
    run_dir = fields_run(tmp_path / "run", status)
    got, out, err = run(["--aoi", AOI, "--query", "all the farm fields", "--fields-run", run_dir,
                         "--out", tmp_path / "out"], capsys)
    assert got == code, err
    objects, summary = read_map(tmp_path / "out")
    mapped = gpd.read_parquet(run_dir / "fields")
    aoi = gpd.read_file(AOI).union_all()
    assert summary["status"] == status and summary["route"] == "fields-run"
    assert len(objects) == (mapped.intersects(aoi)).sum() > 0
    assert objects.within(aoi.buffer(1e-7)).all()  # cut to the AOI
    assert (objects["route"] == "fields-run").all() and (objects["score"] == 0.8).all()
    assert (objects["query"] == "all the farm fields").all()
    assert len(json.loads((tmp_path / "out" / "failures.json").read_text())) == (status == "partial")
