"""Faults a long mapping run meets, injected for real: a disk that fills (a small tmpfs), an S3 output
store that goes away mid-run (moto's server stopped, then started again with the same objects). Each
ends in a clear message and exit status, and a rerun after the fault is gone gives the same map as
a run that met no fault (same field ids and geometries, same class rasters)."""

import importlib.util
import json
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("map_region_tests", ROOT / "test_map_region.py")
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)
job_main, flags, setup = _tests.job_main, _tests.flags, _tests.setup  # the same tiny model, AOI and flags


@pytest.fixture(scope="module")
def reference(ray_cluster, setup, tmp_path_factory):
    """The map of a run that met no fault."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert job_main()(flags(setup, out, ray_cluster.address)) == 0
    return out


def assert_same_map(a: Path, b: Path) -> None:
    x, y = (gpd.read_parquet(p / "fields").sort_values("id") for p in (a, b))
    assert list(x["id"]) == list(y["id"]) and all(g.equals_exact(h, 0) for g, h in zip(x.geometry, y.geometry))
    for scene in ("synth_900", "synth_901"):
        with rasterio.open(a / f"masks/{scene}.tif") as s, rasterio.open(b / f"masks/{scene}.tif") as t:
            assert np.array_equal(s.read(1), t.read(1))


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tmpfs, ``resize(bytes)`` to change its size (needs mount rights)."""
    where = tmp_path / "disk"
    where.mkdir()

    def resize(size: int, first: bool = False) -> None:
        options = f"size={size}" if first else f"remount,size={size}"
        args = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
        done = subprocess.run(args if first else ["mount", "-o", options, str(where)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    resize(40 * 1024, first=True)
    yield where, resize
    subprocess.run(["umount", str(where)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("size, stage", [(40 * 1024, "chips/"), (500 * 1024, "preview.png")])
def test_a_full_disk_is_named_with_the_resume_hint_and_the_rerun_resumes(
        ray_cluster, setup, reference, small_disk, capsys, size, stage):
    """Full during the model stage (a chip's output) or the final stage (the preview): exit 2, one
    line naming the file, what is kept and how to resume; after room is made, the rerun completes the
    same map."""
    disk, resize = small_disk
    resize(size)
    out = disk / "out"
    assert job_main()(flags(setup, out, ray_cluster.address)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {out}/{stage}") and "No space left on device" in last, last
    assert " of 50 chips are finished and kept in " in last and "rerun the same command to resume" in last
    resize(64 * 2**20)
    assert job_main()(flags(setup, out, ray_cluster.address)) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    assert_same_map(reference, out)


@pytest.mark.slow
def test_an_s3_output_that_goes_away_mid_run_ends_partial_and_the_rerun_resumes(
        ray_cluster, setup, reference, s3_server, monkeypatch, capsys):
    """The output store stops while the model actors write (and stays away past the retries): exit 3,
    ``partial``, the unwritten chips listed on stderr, no traceback; rerun once it is back: the same map."""
    import threading
    import time

    from magseg_ray.run_files import RunFiles
    from magseg_ray.scenes.store import ObjectStore

    s3_server.client().create_bucket(Bucket="fault-tests")
    out = "s3://fault-tests/runs/out"
    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(k, v)
    s3 = s3_server.client()

    def stop_after_some_chips():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            listed = s3.list_objects_v2(Bucket="fault-tests", Prefix="runs/out/chips/").get("KeyCount", 0)
            if listed >= 4:
                s3_server.stop()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=stop_after_some_chips)
    watcher.start()
    try:
        assert job_main()(flags(setup, out, ray_cluster.address)) == 3
    finally:
        watcher.join()
        if s3_server._server is None:
            s3_server.start()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["status"] == "partial" and 0 < summary["chips_failed"] <= 50
    assert f"{summary['chips_failed']} of 50 chips failed" in captured.err and "not known to be written: cannot write s3://fault-tests/runs/out/" in captured.err
    assert job_main()(flags(setup, out, ray_cluster.address)) == 0
    files = RunFiles(out, ObjectStore.from_env())
    local = reference.parent / "from-s3"
    for rel in files.listdir(""):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(files.read(rel))
    assert json.loads((local / "summary.json").read_text())["status"] == "complete"
    assert_same_map(reference, local)


@pytest.mark.slow
def test_a_truncated_scene_under_an_s3_prefix_is_a_failure_and_the_rerun_with_it_whole_is_the_same_map(
        ray_cluster, setup, reference, s3_server, monkeypatch, tmp_path, capsys):
    """The README's ``--catalog s3://bucket/scenes`` with one scene cut to half (an interrupted upload):
    exit 3, the scene named; upload it whole and rerun: the same map as a run that met no fault."""
    scenes = _tests.truncated_copy(tmp_path, "synth_901")
    catalog = s3_server.upload(scenes, "fault-tests", "scenes")
    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    assert job_main()(flags(setup, out, ray_cluster.address, catalog=catalog)) == 3
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["chip_id"], f["scene_id"]) for f in failures] == [(None, "synth_901")]
    assert f"{catalog}/synth_901.tif: not catalogued: truncated or damaged" in capsys.readouterr().err
    s3_server.upload(_tests.DEMO_DIR / "scenes" / "synth_901.tif", "fault-tests", "scenes")
    assert job_main()(flags(setup, out, ray_cluster.address, catalog=catalog)) == 0
    assert_same_map(reference, out)
