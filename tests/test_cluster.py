import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from magseg_ray.cluster import LOOPBACK, LocalRayCluster, free_port

ROOT = Path(__file__).resolve().parents[1]


def listening_addresses(pids):
    """Addresses the processes listen on, IPv4-mapped IPv6 (``::ffff:127.0.0.1``) written as IPv4."""
    pids = set(pids)
    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.net_connections("inet")
        if c.status == "LISTEN" and c.pid in pids
    }


def test_fixture_cluster_runs_tasks_on_loopback_only(ray_cluster):
    import ray

    assert ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert f"node:{LOOPBACK}" in ray.cluster_resources()
    assert listening_addresses(ray_cluster.pids()) == {LOOPBACK}


def test_local_cluster_stops_everything_it_started():
    cluster = LocalRayCluster(num_cpus=1).start()
    pids = cluster.pids()
    assert len(pids) > 3 and listening_addresses(pids) == {LOOPBACK}
    cluster.stop()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_local_cluster_starts_on_a_fresh_home_without_a_ray_token(tmp_path, monkeypatch):
    """`ray start` with token auth never makes a token (ray.init does): on a machine where no Ray
    ran before, the head used to exit at once."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with LocalRayCluster(num_cpus=1) as cluster:
        assert cluster.pids()
    assert (tmp_path / ".ray" / "auth_token").read_text().strip()


def test_joining_a_cluster_that_is_not_there_fails_fast():
    # In a fresh process: this one is already connected to the fixture's cluster.
    code = (
        "from magseg_ray.cluster import RaySettings, ray_session\n"
        "with ray_session(RaySettings(address='127.0.0.1:1')): pass"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ClusterError: cannot join the Ray cluster at '127.0.0.1:1'" in result.stderr


def test_no_job_imports_ray_before_its_environment_is_set():
    """Ray reads RAY_AUTH_MODE and its loopback switch at import: importing a job (its flags
    included) must not import Ray; ray_session sets the environment, then imports it."""
    code = (
        "import importlib.util, pathlib, sys\n"
        "for path in sorted(pathlib.Path('jobs').glob('*.py')):\n"
        "    spec = importlib.util.spec_from_file_location(path.stem + '_job', path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    assert 'ray' not in sys.modules, f'{path} imports ray'\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=root, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_ray_imported_before_its_environment_is_refused():
    code = (
        "import ray\n"
        "from magseg_ray.cluster import ray_session\n"
        "with ray_session(): pass\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode != 0
    assert "ClusterError: Ray was imported before magseg_ray.cluster.ray_environment() set" in result.stderr


def test_a_job_without_an_address_starts_its_own_ray_whatever_ray_start_recorded():
    """A `ray start --head` killed rather than stopped leaves its address as the machine's current
    cluster; a job without --address or RAY_ADDRESS starts its own Ray anyway and says what it found."""
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # Ray's socket paths must stay short
    try:
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")  # nothing there
        code = ("from magseg_ray.cluster import RaySettings, ray_session\n"
                "with ray_session(RaySettings(num_cpus=1)) as r: print('CPUs', r['CPU'])")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_TMPDIR": tmp, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0 and "CPUs 1.0" in done.stdout, done.stderr[-3000:]
        assert "starting a private local Ray for this job" in done.stderr and "pass --address 127.0.0.1:" in done.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_joined_cluster_without_the_gpus_asked_for_is_refused_after_the_stated_wait(ray_cluster):
    from magseg_ray.cluster import RaySettings, ray_session
    from magseg_ray.errors import ClusterError

    with pytest.raises(ClusterError, match="--use-gpu asks for 1 GPUs and the cluster it joined still has 0 after 2 s"):
        with ray_session(RaySettings(address=ray_cluster.address, gpus=1, gpu_wait_s=2)):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("job, args, flag", [
    ("map_region", ["--use-gpu", "--out", "{tmp}/map"], "--use-gpu asks for 1 GPUs"),
    ("sft", ["--use-gpu", "--num-workers", "2", "--data", "tests/data/naip", "--base", "tiny", "--storage", "{tmp}"],
     "--use-gpu asks for 2 GPUs"),
    ("grpo", ["--gpus-per-actor", "0.5", "--data", "tests/data/naip", "--model", "{tiny}", "--storage", "{tmp}"],
     "--use-gpu/--gpus-per-actor asks for 1 GPUs"),
    ("serve", ["--gpus-per-replica", "1", "--port", "{port}"], "--gpus-per-replica asks for 1 GPUs"),
])
def test_every_jobs_gpu_flags_are_refused_at_once_on_a_machine_without_one(tmp_path, tiny_dir, job, args, flag):
    """Before: the job waited forever for a GPU that a private local Ray never gets."""
    args = [a.format(tmp=tmp_path, tiny=tiny_dir, port=free_port()) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, f"jobs/{job}.py", *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: {flag} and this machine has 0 (a private local Ray gains none)" in done.stderr, done.stderr[-3000:]


def test_a_private_ray_counts_what_the_job_reserves_where_the_machine_has_fewer_cores(monkeypatch, capsys):
    """The core count is patched (this test's one stand-in: the machine's cores are what they are)."""
    from magseg_ray.cluster import RaySettings, _local_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _local_cpus(RaySettings(reserved_cpus=2.0)) == 3.0  # 2 workers x 1 CPU and the reader's 0.5
    assert "reserve 2 CPUs and its readers 0.5; this machine has 2 cores: its local Ray counts 3" in capsys.readouterr().err
    assert _local_cpus(RaySettings(reserved_cpus=1.0)) is None  # fits: all cores, as before
    assert _local_cpus(RaySettings(reserved_cpus=8.0, num_cpus=1)) == 1  # asked for by name: as asked
    assert _local_cpus(RaySettings()) is None


@pytest.mark.slow
def test_the_readmes_sft_example_runs_at_its_default_flags_on_this_machine(tmp_path):
    """README's `jobs/sft.py --data tests/data/naip --base tiny --val-fraction 0.5 ...` at the default 2
    workers x 1 CPU (its two scenes need the 0.5 for a validation scene; without it the job says so).
    Before: on this 2-core machine its private Ray had no CPU left for the chip reader, and the job
    waited forever (11 minutes without step 1, stopped by hand)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "jobs/sft.py", "--data", "tests/data/naip", "--base", "tiny",
                           "--val-fraction", "0.5", "--max-steps", "2", "--storage", str(tmp_path)], cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 2
