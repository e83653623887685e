"""``jobs/serve.py`` as a user starts it: a subprocess with a clean environment (no ``RAY_*``
variables) and its own HOME, fresh or holding a stale ``~/.ray/auth_token`` from an earlier Ray.
It starts its own local Ray (``magseg_ray.cluster.ray_environment`` decides Ray's environment
before Ray is imported), answers ``/healthz`` and a tile over HTTP on 127.0.0.1, and stops on
SIGTERM with exit status 0."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from magseg_ray.cluster import free_port
from magseg_ray.model.card import ModelPrompt, write_model_prompt
from magseg_ray.serve.tiles import Tile

ROOT = Path(__file__).resolve().parents[2]
INSIDE = Tile(19, 410689, 243046)
"""A tile wholly inside the demo scene synth_900."""


def clean_env(home: Path) -> dict:
    """What a fresh login shell has: a PATH, a HOME; no RAY_* or test settings."""
    return {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), "HOME": str(home),
            "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}


def wait_for_url(proc, out: Path, err: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("{"):
                return json.loads(line)["url"]
        if proc.poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"jobs/serve.py did not come up (exit {proc.poll()}):\n{err.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("home", ["fresh", "stale_token"])
def test_serve_job_starts_in_a_clean_environment(home, tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    write_model_prompt(model, ModelPrompt(chip_size=128))
    (tmp_path / "home").mkdir()
    if home == "stale_token":  # left by an earlier Ray: Ray turns token auth on when it sees it
        (tmp_path / "home" / ".ray").mkdir()
        (tmp_path / "home" / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    cmd = [sys.executable, str(ROOT / "jobs" / "serve.py"), "--model", str(model), "--port", str(port),
           "--max-new-tokens", "8", "--overlap", "32"]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, env=clean_env(tmp_path / "home"), stdout=o, stderr=e, cwd=tmp_path,
                                start_new_session=True)
    try:
        url = wait_for_url(proc, out, err, timeout=420)
        assert url == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/healthz", timeout=60) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        with urllib.request.urlopen(f"{url}/tiles/{INSIDE}.png", timeout=300) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/png"
            assert r.read().startswith(b"\x89PNG")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
