"""The package as users install it without ``-e``: a wheel built from the tracked sources holds the
demo model, the demo scenes and the viewer's web assets (package data), and (slow) the demo map
runs from an install of that wheel, not from this checkout."""

import json
import os
import shutil
import subprocess
import sys
import time
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
    command = [sys.executable, str(ROOT / "jobs" / "map_region.py"), "--max-new-tokens", "8", "--out", str(tmp_path / "demo")]
    start = time.monotonic()
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["aoi"].startswith(str(target / "magseg_ray" / "assets"))
    assert summary["chips"] > 0 and (tmp_path / "demo" / "fields.gpkg").exists()
    # the standards' validators on README command 1's outputs: fiboa 0.3, GeoParquet 1.1, GeoPackage
    problems = map_problems(tmp_path / "demo", summary["fields"])
    assert not any(problems.values()), problems

    # what a person reads (not a TTY here): the job's own lines only, a progress line every 10 s
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert all(line.startswith(("[map] ", "[ray] ", "{")) for line in lines), lines
    assert len(lines) <= 6 + seconds / 10, (seconds, lines)
    progress = [line for line in lines if line.startswith("[map] chips ")]
    assert progress[-1].startswith(f"[map] chips {summary['chips']}/{summary['chips']} 100% | ") and "chips/s" in progress[-1]
    ray_log = (tmp_path / "demo" / "logs" / "ray.log").read_text()
    assert "Started a local Ray instance" in ray_log and "Ray session logs (raylet, GCS, workers' output): " in ray_log
    assert f"[ray] Ray's own logs: {tmp_path / 'demo' / 'logs' / 'ray.log'}" in result.stderr

    # --verbose: Ray's own lines on the terminal again (the rerun resumes: every chip is done)
    again = subprocess.run([*command, "--verbose"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Started a local Ray instance" in again.stderr, again.stderr[-3000:]


def test_ci_runs_readme_command_2_with_the_slow_tests():
    """CI is README command 2, and that command runs the end-to-end tests marked slow as well."""
    root = Path(__file__).resolve().parents[1]
    ci = (root / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci in (root / "README.md").read_text()
    assert ci.endswith("-m pytest -m ''")


# --- dependencies: every pin is used, every import is declared -------------------------------------------

INDIRECT = {
    "s3fs": ("magseg_ray/scenes/store.py", "fsspec's s3:// filesystem"),
    "pyogrio": ("magseg_ray/chips/windows.py", "geopandas' vector file engine"),
    "accelerate": ("magseg_ray/model/lora.py", "peft's model loading"),
}
"""Pins no file imports: each is what a named module uses through another library (and the module says
so)."""


def _requirement_name(spec: str) -> str:
    import re

    return re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _dependencies() -> tuple[set[str], set[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {_requirement_name(s) for specs in project["optional-dependencies"].values() for s in specs}
    return core, extras


def _imported_distributions() -> dict[str, str]:
    """Distribution -> one file of magseg_ray/ or jobs/ that imports it (third-party top-level modules only)."""
    import ast
    from importlib.metadata import packages_distributions

    owners = packages_distributions()
    found = {}
    for path in sorted([*(ROOT / "magseg_ray").rglob("*.py"), *(ROOT / "jobs").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "magseg_ray":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                own = top.lower().replace("_", "-")  # plugins that add to a package's namespace are not it
                for dist in {own} if own in dists else dists:
                    found.setdefault(dist, str(path.relative_to(ROOT)))
    return found


def test_every_pinned_dependency_is_imported_or_named_with_its_user():
    core, _ = _dependencies()
    imported = _imported_distributions()
    unused = sorted(core - set(imported) - set(INDIRECT))
    assert not unused, f"pinned in pyproject.toml and imported nowhere in magseg_ray/ or jobs/: {unused}"
    for name, (user, _) in INDIRECT.items():
        assert name in core and name not in imported, f"{name}: not pinned, or imported directly (drop it from INDIRECT)"
        assert user is None or name in (ROOT / user).read_text(), f"{user} does not say it uses {name}"


def test_every_imported_distribution_is_declared():
    """A module imported directly is a dependency of ours, not something another pin happens to bring."""
    core, extras = _dependencies()
    undeclared = {d: f for d, f in _imported_distributions().items() if d not in core | extras}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
