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


@pytest.mark.slow
def test_s3_scenes_killed_and_restarted_mid_run_with_a_local_out_give_the_same_map_after_a_rerun(
        ray_cluster, setup, reference, s3_server, monkeypatch, tmp_path, capsys):
    """``--catalog s3://...`` and a local ``--out``: the store stops as the model stage starts (every chip
    read meets it) and comes back 3 s later. The run rides it out or ends partial naming the store,
    never a traceback; a rerun gives the same map as a run that met no fault. The stop is timed by
    wrapping the model stage's entry (a real stop of a real server, not a mock)."""
    import threading

    import magseg_ray.map_region as map_region

    catalog = s3_server.upload(_tests.DEMO_DIR / "scenes", "fault-tests", "scenes-kill")
    for k, v in {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    model_stage, served = map_region._map_chips, []

    def outage_at_start(*args, **kwargs):
        s3_server.stop()
        restart = threading.Timer(3.0, lambda: (s3_server.start(), served.append(s3_server.requests)))
        restart.start()
        try:
            return model_stage(*args, **kwargs)
        finally:
            restart.join()
            served.append(s3_server.requests)

    monkeypatch.setattr(map_region, "_map_chips", outage_at_start)
    out = tmp_path / "out"
    first = job_main()(flags(setup, out, ray_cluster.address, catalog=catalog))
    err = capsys.readouterr().err
    assert served[1] > served[0], "no chip was read after the store came back"
    assert first in (0, 3) and "Traceback" not in err, err[-3000:]
    monkeypatch.setattr(map_region, "_map_chips", model_stage)
    assert job_main()(flags(setup, out, ray_cluster.address, catalog=catalog)) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    assert_same_map(reference, out)

def _carrying(entry: bytes) -> list[int]:
    """Live processes whose environment holds ``entry`` (read from /proc: Ray's renamed processes zero
    the start of theirs, which psutil then reads as empty)."""
    import psutil

    found = []
    for pid in psutil.pids():
        try:
            if entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and psutil.Process(pid).status() != "zombie":
                found.append(pid)
        except (OSError, psutil.Error):
            pass
    return found


@pytest.mark.slow
def test_a_sigkilled_driver_takes_its_private_ray_with_it_and_the_rerun_completes(setup, tmp_path):
    """A job without --address starts its own Ray; SIGKILL the driver mid-run: within 10 s no process of
    that Ray is left (its agents lived 60 s more, waiting on the dead GCS), and the rerun completes.
    The run's processes are told apart from every other Ray on the machine by their own RAY_TMPDIR."""
    import os
    import shutil
    import signal
    import sys
    import tempfile
    import time

    tmp = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths
    mark = f"RAY_TMPDIR={tmp}".encode()
    out = tmp_path / "out"
    args = [a for a in flags(setup, out, "-") if a not in ("--address", "-")]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": tmp, "PYTHONPATH": str(ROOT.parent)}
    job = [sys.executable, str(ROOT.parent / "jobs" / "map_region.py"), *args]
    try:
        driver = subprocess.Popen(job, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while len(list(out.glob("chips/*/*.npz"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None and len(_carrying(mark)) > 5, "the run ended (or never started) before the kill"
        driver.kill()
        driver.wait()
        killed = time.monotonic()
        while _carrying(mark) and time.monotonic() - killed < 10:
            time.sleep(0.5)
        assert _carrying(mark) == [], f"alive 10 s after the driver was killed: {_carrying(mark)}"
        done = subprocess.run(job, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["chips_resumed"] >= 2
    finally:
        for pid in _carrying(mark):  # this run's processes only
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
