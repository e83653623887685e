"""jobs/map_region.py end to end on a local Ray cluster, with the offline ``tiny`` model (random
weights: its map is meaningless, the pipeline around it is what is tested; the reducer's geometry
is tested against known masks in tests/fields/test_reduce.py)."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from scipy import ndimage

from magseg_ray.errors import ConfigError, SceneError, SchemaError
from magseg_ray.map_region import DEMO_DIR, ChipMapper, MapConfig, check_output, plan
from magseg_ray.model.card import ModelPrompt, write_model_prompt
from magseg_ray.prompt import patch_boxes
from magseg_ray.run_files import RunFiles, chip_file, decode_chip
from magseg_ray.scenes.catalog import build_catalog

ROOT = Path(__file__).resolve().parents[1]


def job_main():
    spec = importlib.util.spec_from_file_location("map_region_job", ROOT / "jobs" / "map_region.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_dir):
    """The tiny model with a 128 px chip card, and the demo AOI's synthetic part: two scenes in
    UTM 47N and 48N."""
    root = tmp_path_factory.mktemp("map")
    model = root / "model"
    shutil.copytree(tiny_dir, model)
    write_model_prompt(model, ModelPrompt(chip_size=128))
    demo = gpd.read_file(DEMO_DIR / "demo.geojson")
    aoi = root / "aoi.geojson"
    aoi.write_text(demo.iloc[:1].to_json())
    return {"root": root, "model": str(model), "aoi": str(aoi)}


def flags(setup, out, address, **extra):
    values = {"aoi": setup["aoi"], "model": setup["model"], "out": str(out), "address": address,
              "max-new-tokens": 8, "cpus-per-actor": 0.5, "overlap": 32, **extra}
    return [x for k, v in values.items() for x in (f"--{k}", str(v))]


def test_maps_two_utm_zones_and_a_killed_run_resumes_to_the_same_map(ray_cluster, setup, capsys):
    main, root = job_main(), setup["root"]
    assert main(flags(setup, root / "a", ray_cluster.address)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    a = RunFiles(str(root / "a"))
    assert summary["scenes"] == 2 and summary["chips_failed"] == 0 and summary["chips"] == 50
    assert summary["status"] == "complete" and summary["seed_px"] == 0  # the tiny test model's card has no cores
    assert summary["patches"] == summary["patches_this_run"] > 0 and summary["patches_per_s"] > 0
    assert a.exists("fields.gpkg") and Path(a.uri("preview.png")).stat().st_size > 10_000
    fields = gpd.read_parquet(a.uri("fields"))
    assert len(fields) == summary["fields"] and fields.crs.to_epsg() == 4326

    # chip seams never split a field: each polygon of a scene is one connected field of its
    # stitched raster, and some of them span chips
    with rasterio.open(a.uri("masks/synth_900.tif")) as src:
        classes, transform, crs = src.read(1), src.transform, src.crs
    from magseg_ray.masks.instances import instances_from_classes

    inst = instances_from_classes(np.where(classes == 255, 0, classes))
    sizes = ndimage.sum_labels(np.ones_like(inst), inst, np.arange(1, inst.max() + 1))
    mine = fields[["synth_900" in s.split("+") for s in fields["scene_id"]]]
    assert len(mine) == int((sizes >= 16).sum())
    spans = [b for b in mine.to_crs(crs).bounds.itertuples()
             if int((b.minx - transform.c) / transform.a) // 96 != int((b.maxx - transform.c) / transform.a) // 96]
    assert spans  # fields crossing chip seams (stride 96 px) came out as single polygons

    # kill a run mid-way (SIGKILL, no cleanup), rerun the same command: it resumes, same map
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/map_region.py"), *flags(setup, root / "b", ray_cluster.address)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    chips = Path(root / "b" / "chips")
    deadline = time.time() + 300
    while time.time() < deadline and len(list(chips.rglob("*.npz"))) < 6:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(chips.rglob("*.npz")))
    assert 6 <= done < 50 and not (root / "b" / "summary.json").exists()
    assert main(flags(setup, root / "b", ray_cluster.address)) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["chips_resumed"] >= done and resumed["patches"] == summary["patches"]
    again = gpd.read_parquet(root / "b" / "fields").sort_values("id")
    first = fields.sort_values("id")
    assert list(again["id"]) == list(first["id"])
    assert all(x.equals_exact(y, 0) for x, y in zip(again.geometry, first.geometry))
    for scene in ("synth_900", "synth_901"):
        with rasterio.open(root / "a" / f"masks/{scene}.tif") as x, rasterio.open(root / "b" / f"masks/{scene}.tif") as y:
            assert np.array_equal(x.read(1), y.read(1))

    # evaluate.py scores the map against the scene's truth
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    truth = DEMO_DIR / "scenes" / "synth_900.fields.gpkg"
    assert evaluate.main(["--pred", a.uri("masks/synth_900.tif"), "--truth", str(truth)]) == 0
    assert "instance" in capsys.readouterr().out


def test_a_broken_scene_goes_to_failures_and_the_rest_is_mapped(ray_cluster, setup, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    shutil.copytree(DEMO_DIR / "scenes", scenes)
    build_catalog(scenes).save(tmp_path / "catalog.parquet")
    data = (scenes / "synth_901.tif").read_bytes()
    (scenes / "synth_901.tif").write_bytes(data[:2000] + bytes(len(data) - 2000))  # tiles destroyed after cataloguing
    # a partial map says so: exit status 3, status "partial", every failed chip named on stderr
    assert job_main()(flags(setup, tmp_path / "out", ray_cluster.address, catalog=tmp_path / "catalog.parquet")) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert summary["chips_failed"] == len(failures) > 0 and {f["scene_id"] for f in failures} == {"synth_901"}
    assert summary["status"] == "partial" == json.loads((tmp_path / "out" / "summary.json").read_text())["status"]
    assert summary["scenes"] == 1 and (tmp_path / "out" / "masks" / "synth_900.tif").exists()
    assert f"{len(failures)} of {summary['chips']} chips failed" in captured.err
    assert all(f["chip_id"] in captured.err for f in failures[:20]) and "rerun the same command" in captured.err


def truncated_copy(tmp_path, scene: str):
    """The demo scenes with ``scene`` cut to half its size (what an interrupted upload leaves)."""
    scenes = tmp_path / "scenes"
    shutil.copytree(DEMO_DIR / "scenes", scenes)
    path = scenes / f"{scene}.tif"
    os.truncate(path, path.stat().st_size // 2)
    return scenes


def test_a_truncated_scene_under_a_folder_catalog_is_a_named_failure(ray_cluster, setup, tmp_path, capsys):
    scenes = truncated_copy(tmp_path, "synth_901")
    assert job_main()(flags(setup, tmp_path / "out", ray_cluster.address, catalog=scenes)) == 3
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [(f["chip_id"], f["scene_id"]) for f in failures] == [(None, "synth_901")]
    assert "synth_901.tif: not catalogued: truncated or damaged" in failures[0]["error"]
    assert summary["status"] == "partial" and summary["scenes_failed"] == 1 and summary["chips_failed"] == 0
    assert "0 of 25 chips and 1 scenes failed" in captured.err and "synth_901.tif" in captured.err


def test_a_lost_scene_outside_the_aoi_does_not_make_the_map_partial(setup, tmp_path):
    base = dict(aoi=setup["aoi"], model=setup["model"], out=str(tmp_path / "o"))
    assert plan(MapConfig(**base, catalog=str(truncated_copy(tmp_path, "naip_43p7840_m92p4228")))).lost == []


def test_bad_inputs(setup, tmp_path):
    base = dict(aoi=setup["aoi"], model=setup["model"], out=str(tmp_path / "o"))
    far = tmp_path / "far.geojson"
    far.write_text('{"type": "Polygon", "coordinates": [[[10, 50], [10.1, 50], [10.1, 50.1], [10, 50]]]}')
    with pytest.raises(SceneError, match="touches none"):
        plan(MapConfig(**{**base, "aoi": str(far)}))
    with pytest.raises(ConfigError, match="cannot be read"):
        plan(MapConfig(**{**base, "aoi": str(tmp_path / "missing.geojson")}))
    other = tmp_path / "model"
    shutil.copytree(setup["model"], other)
    (other / "magseg.json").write_text('{"schema": "nope"}')
    with pytest.raises(SchemaError, match="nope"):
        plan(MapConfig(**{**base, "model": str(other)}))
    with pytest.raises(ConfigError, match="multiple"):
        plan(MapConfig(**{**base, "chip_size": 100}))
    with pytest.raises(ConfigError, match="chips_per_call 0: must be at least 1"):
        plan(MapConfig(**{**base, "chips_per_call": 0}))
    # an output folder made for another AOI or model is refused, not overwritten
    p = plan(MapConfig(**base))
    files = RunFiles(str(tmp_path / "o"))
    assert check_output(files, p.identity) is False
    files.write("run.json", json.dumps(p.identity))
    assert check_output(files, p.identity) is True
    with pytest.raises(ConfigError, match="different aoi_sha256"):
        check_output(files, {**p.identity, "aoi_sha256": "x"})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        check_output(RunFiles(str(tmp_path / "busy")), p.identity)
    assert job_main()(["--aoi", str(far), "--model", setup["model"], "--out", str(tmp_path / "x")]) == 2


def test_an_out_that_is_a_file_is_refused_before_ray_starts(setup, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    base = dict(aoi=setup["aoi"], model=setup["model"])
    with pytest.raises(ConfigError, match="taken' is a file: name a folder"):
        plan(MapConfig(**base, out=str(tmp_path / "taken")))
    with pytest.raises(ConfigError, match="lies below the file"):
        plan(MapConfig(**base, out=str(tmp_path / "taken" / "run")))
    # the job: exit 2 and one line naming --out, with no Ray started (no --address, none running here)
    assert job_main()(["--aoi", setup["aoi"], "--model", setup["model"], "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --out {str(tmp_path / 'taken')!r} is a file: name a folder (new or a run's) or an s3:// prefix"]
    assert (tmp_path / "taken").read_text() == "mine"


def test_the_fields_step_core_depth_comes_from_the_card_unless_given(setup, tmp_path):
    base = dict(aoi=setup["aoi"], out=str(tmp_path / "o"))
    cored = tmp_path / "cored"
    shutil.copytree(setup["model"], cored)
    card = json.loads((cored / "magseg.json").read_text())
    (cored / "magseg.json").write_text(json.dumps({**card, "field_seed_px": 16}))
    assert plan(MapConfig(**base, model=setup["model"])).seed_px == 0  # a card without it
    p = plan(MapConfig(**base, model=str(cored)))
    assert p.seed_px == 16 and plan(MapConfig(**base, model=str(cored), seed_px=0)).seed_px == 0
    assert "field_seed_px" not in p.identity["model_prompt"]  # a finished run resumes under another depth
    for bad in (-2, float("nan")):
        with pytest.raises(ConfigError, match=f"seed_px {bad}"):
            plan(MapConfig(**base, model=str(cored), seed_px=bad))


def test_the_edge_split_comes_from_the_card_unless_the_flag_says(setup, tmp_path):
    base = dict(aoi=setup["aoi"], out=str(tmp_path / "o"))
    edged = tmp_path / "edged"
    shutil.copytree(setup["model"], edged)
    card = json.loads((edged / "magseg.json").read_text())
    (edged / "magseg.json").write_text(json.dumps({**card, "field_edge_quantile": 0.85, "field_edge_depth_m": 8}))
    assert plan(MapConfig(**base, model=setup["model"])).rules.edge_quantile == 0  # a card without it: off
    rules = plan(MapConfig(**base, model=str(edged))).rules
    assert (rules.edge_quantile, rules.edge_depth_m, rules.edge_sigma_m) == (0.85, 8.0, 2.0)
    assert plan(MapConfig(**base, model=str(edged), edge_quantile=0)).rules.edge_quantile == 0
    with pytest.raises(ConfigError, match="edge_quantile 1.5"):
        plan(MapConfig(**base, model=str(edged), edge_quantile=1.5))


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_how_to_resume(ray_cluster, setup, tmp_path):
    """Ctrl-C (SIGINT to the job's process group) mid-run: exit 130, one line on what was kept and
    how to resume, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/map_region.py"), *flags(setup, tmp_path / "out", ray_cluster.address)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    chips = tmp_path / "out" / "chips"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(chips.rglob("*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = len(list(chips.rglob("*.npz")))
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted: {kept} of 50 chips are finished and kept in {tmp_path / 'out'}; "
                    "rerun the same command to resume"), err[-3000:]


def _record(chip_id: str, image: np.ndarray, patch: int, error=None) -> dict:
    h, w = image.shape[:2]
    return {"chip_id": chip_id, "scene_id": "s", "error": error, "image": image, "valid": np.ones((h, w), bool),
            "patches": np.array(patch_boxes(h, w, patch) if h else [], np.int32).reshape(-1, 4)}


def _batch(records: list[dict]) -> dict:
    """Records as a numpy batch: object columns, "no error" as NaN (what Ray Data hands over)."""
    batch = {k: np.empty(len(records), object) for k in records[0]}
    for i, r in enumerate(records):
        for k, v in r.items():
            batch[k][i] = np.nan if k == "error" and v is None else v
    return batch


def test_a_batch_of_chips_is_answered_as_each_chip_alone_and_a_bad_chip_fails_alone(tiny_dir, tmp_path):
    """The mapping model actor over a numpy batch of chip records, as Ray Data's ``map_batches`` calls it."""
    mapper = ChipMapper(str(tiny_dir), ModelPrompt(patch_size=16), 5, 40, str(tmp_path))
    rng = np.random.default_rng(0)
    a, c = (rng.integers(0, 256, (48, 32, 3), dtype=np.uint8) for _ in range(2))
    records = [_record("a", a, 16), _record("b", np.zeros((0, 0, 3), np.uint8), 16, error="b: cannot read"),
               _record("c", c, 16), _record("d", np.zeros((32, 32, 3), np.float32), 16)]
    out = mapper(_batch(records))
    assert out["chip_id"] == ["a", "b", "c", "d"]
    assert out["error"][:3] == [None, "b: cannot read", None] and out["error"][3].startswith("d: chip must be uint8")
    assert out["patches"] == [6, 0, 6, 0] and out["seconds"][0] > 0 and out["seconds"][1] == 0
    for name, image in (("a", a), ("c", c)):  # each chip's mask as the actor answers it alone
        written = decode_chip((tmp_path / chip_file(name)).read_bytes())
        classes, confidence = mapper.segmenter.segment(image, np.ones(image.shape[:2], bool), patch_boxes(48, 32, 16))
        assert np.array_equal(written["classes"], classes) and np.array_equal(written["confidence"], confidence)
    assert not (tmp_path / chip_file("b")).exists() and not (tmp_path / chip_file("d")).exists()


def model_actors(address: str) -> dict:
    """``{actor_id: pid}`` of the live mapping model actors (Ray Data's map workers of ChipMapper) of
    the cluster at ``address`` (named: other Rays on the machine would make the lookup ambiguous)."""
    from ray.util.state import list_actors

    alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000,
                        raise_on_missing_output=False)
    return {a.actor_id: a.pid for a in alive if "ChipMapper" in (a.class_name or "") + (a.name or "") or
            "MapWorker" in (a.class_name or "")}


@pytest.mark.slow
def test_a_killed_model_actor_is_replaced_and_the_map_is_the_same(ray_cluster, setup, tmp_path, capsys):
    """SIGKILL to a model actor (not the driver) mid-run: Ray restarts it and retries its chips; the
    run completes with the map of an uninterrupted run, chip for chip."""
    main = job_main()
    assert main(flags(setup, tmp_path / "whole", ray_cluster.address)) == 0
    capsys.readouterr()
    earlier = set(model_actors(ray_cluster.address))  # the whole run's actor may not have left yet
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs/map_region.py"), *flags(setup, tmp_path / "killed", ray_cluster.address)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        chips = tmp_path / "killed" / "chips"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(chips.rglob("*.npz"))) < 4 and proc.poll() is None:
            time.sleep(0.2)
        actors = {k: pid for k, pid in model_actors(ray_cluster.address).items() if k not in earlier}
        assert len(actors) == 1 and proc.poll() is None, (actors, proc.poll())
        os.kill(next(iter(actors.values())), signal.SIGKILL)
        killed_at = len(list(chips.rglob("*.npz")))
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert killed_at < 50 and summary["status"] == "complete" and summary["chips_failed"] == 0
    assert summary["chips_resumed"] == 0 and summary["chips"] == 50
    for scene in ("synth_900", "synth_901"):
        with rasterio.open(tmp_path / "whole" / f"masks/{scene}.tif") as x, \
                rasterio.open(tmp_path / "killed" / f"masks/{scene}.tif") as y:
            assert np.array_equal(x.read(1), y.read(1))
    a = gpd.read_parquet(tmp_path / "whole" / "fields").sort_values("id")
    b = gpd.read_parquet(tmp_path / "killed" / "fields").sort_values("id")
    assert list(a["id"]) == list(b["id"]) and all(x.equals_exact(y, 0) for x, y in zip(a.geometry, b.geometry))
