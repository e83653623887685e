"""The package as users install it without ``-e``: a wheel built from the tracked sources holds the
demo model, the demo scenes and the viewer's web assets (package data), and (slow) the demo map
runs from an install of that wheel, not from this checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fields.validators import map_problems

ROOT = Path(__file__).resolve().parents[1]


def tracked(prefix: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", prefix], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if line)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the tracked files (the build leaves nothing in the checkout)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for rel in tracked("."):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("magseg_ray-*.whl")
    return path


def test_wheel_holds_the_demo_model_scenes_and_web_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = tracked("magseg_ray/assets") + tracked("magseg_ray/serve/static")
    assert "magseg_ray/assets/demo_model/model.safetensors" in data
    assert "magseg_ray/assets/demo/scenes/synth_900.tif" in data
    missing = [f for f in data if f not in names]
    assert not missing, missing
    assert "magseg_ray/map_region.py" in names and not any(n.startswith(("tests/", "jobs/")) for n in names)


@pytest.mark.slow
def test_demo_map_runs_from_an_installed_wheel(wheel, tmp_path):
    """README command 1's job with every default (demo AOI, scenes and model) on an install of the
    wheel: a private local Ray whose workers import the installed package too."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
           "HOME": str(tmp_path), "PYTHONPATH": str(target), "LANG": "C.UTF-8"}
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "map_region.py"), "--max-new-tokens", "8",
                             "--out", str(tmp_path / "demo")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["aoi"].startswith(str(target / "magseg_ray" / "assets"))
    assert summary["chips"] > 0 and (tmp_path / "demo" / "fields.gpkg").exists()
    # the standards' validators on README command 1's outputs: fiboa 0.3, GeoParquet 1.1, GeoPackage
    problems = map_problems(tmp_path / "demo", summary["fields"])
    assert not any(problems.values()), problems


def test_ci_runs_readme_command_2_with_the_slow_tests():
    """CI is README command 2, and that command runs the end-to-end tests marked slow as well."""
    root = Path(__file__).resolve().parents[1]
    ci = (root / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci in (root / "README.md").read_text()
    assert ci.endswith("-m pytest -m ''")
