"""The cluster files (cluster/) are valid for the tools that read them, and name real jobs and flags.

- Ray cluster launcher YAMLs (cluster/*.yaml): filled with defaults and validated exactly as
  ``ray up`` does (``ray.autoscaler._private.util.prepare_config`` then ``validate_config``, which
  checks Ray's own ``ray/autoscaler/ray-schema.json`` with jsonschema).
- KubeRay manifests (cluster/kuberay/*.yaml): validated with jsonschema against
  ``tests/cluster/kuberay_v1_subset.json``, a hand-written subset of the openAPIV3Schema of the
  KubeRay v1 CRDs (ray.io/v1 RayJob and RayService; ray-operator/config/crd/bases in the KubeRay
  repository), since the CRDs ship in no pip package. It lists only the fields the manifests use,
  with the CRD's names, types and enums, and closes every object so that a misspelt or unlisted
  field fails. Their embedded Ray payloads are checked by Ray itself: ``runtimeEnvYAML`` builds a
  ``ray.runtime_env.RuntimeEnv`` and ``serveConfigV2`` validates as ``ray.serve.schema.ServeDeploySchema``.
- Every ``python .../jobs/X.py --flag`` in the manifests and in cluster/README.md names a job that
  exists and a flag its ``--help`` lists; the Serve app's ``args`` are flags of jobs/serve.py.
  A job that is not written yet fails here with a message saying so.
- cluster/Dockerfile (not built here: no registry for base images) copies paths that exist, installs
  the project from pyproject.toml, and starts from the Ray image of the pinned Ray and Python.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHER = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
CRD = json.loads((Path(__file__).with_name("kuberay_v1_subset.json")).read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
JOB_CALL = re.compile(r"python3?\s+(?:\S*/)?jobs/(\w+)\.py\b([^\n`]*)")
"""A job command line: the job's name and the rest of its line (continuations joined first)."""


def test_the_files_are_there():
    assert {p.name for p in LAUNCHER} >= {"aws.yaml", "gcp.yaml"}
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in KUBERAY]
    assert kinds.count("RayJob") >= 3 and kinds.count("RayService") >= 1


# ---- Ray cluster launcher -------------------------------------------------------------------------

def prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_validates_with_rays_schema(path):
    from ray.autoscaler._private.util import validate_config

    config = prepared(path)
    validate_config(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["max_workers"] == 0  # head runs no tasks
    gpu_groups = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["resources"]["GPU"] for t in gpu_groups.values()} >= {1, 8}  # mapping and training groups
    assert all(t["min_workers"] == 0 for t in types.values())  # everything scales to zero
    assert config["max_workers"] == sum(t["max_workers"] for t in types.values())
    assert config["setup_commands"] == []  # the image carries the project: no installs at boot


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_rays_validator_rejects_a_misspelt_field(path):
    from ray.autoscaler._private.util import validate_config

    config = prepared(path)
    bad = copy.deepcopy(config)
    bad["docker"]["imagee"] = bad["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["head"]["resources"]["CPU"] = 0.5  # Ray wants whole resources here
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)


# ---- KubeRay --------------------------------------------------------------------------------------

def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator({**CRD["definitions"][kind], "definitions": CRD["definitions"]})


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_the_crd_subset(path):
    doc = yaml.safe_load(path.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)]
    assert errors == []


def test_crd_subset_rejects_a_misspelt_field():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-sft.yaml").read_text())
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 2
    doc["spec"]["shutdownAfterJobFinish"] = True
    doc["spec"]["submissionMode"] = "K8sMode"
    messages = " ".join(e.message for e in crd_validator("RayJob").iter_errors(doc))
    assert "'maxReplica' was unexpected" in messages and "'shutdownAfterJobFinish' was unexpected" in messages
    assert "'K8sMode' is not one of" in messages


def cluster_specs(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["rayClusterConfig"]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_ray_payloads_are_valid_for_ray(path):
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load(path.read_text())
    spec = cluster_specs(doc)
    assert spec["rayVersion"] == ray.__version__ == pinned("ray")
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {f"REGISTRY/magseg-ray:{PYPROJECT['project']['version']}"}
    for group in spec.get("workerGroupSpecs", []):
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        if group["maxReplicas"] > group["minReplicas"]:
            assert spec.get("enableInTreeAutoscaling") is True, f"{group['groupName']} scales but nothing scales it"
    if doc["kind"] == "RayJob":
        RuntimeEnv(**yaml.safe_load(doc["spec"]["runtimeEnvYAML"]))
    else:
        serve = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
        assert [a.import_path for a in serve.applications] == ["magseg_ray.serve:app"]


# ---- job entry points and flags -------------------------------------------------------------------

def pinned(name: str) -> str:
    spec = next(d for d in PYPROJECT["project"]["dependencies"] if re.match(rf"{name}\b", d))
    return spec.split("==")[1]


def job_calls() -> list[tuple[str, str, str]]:
    """(source file, job, flag) for every flag of every job command line in the cluster files."""
    calls = []
    for path in [*LAUNCHER, *KUBERAY, CLUSTER / "README.md"]:
        text = path.read_text()
        if path.suffix == ".yaml":
            for doc in yaml.safe_load_all(text):
                if doc.get("kind") == "RayService":
                    for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
                        calls += [(path.name, "serve", "--" + k.replace("_", "-")) for k in app.get("args", {})]
            text = "\n".join(str(d.get("spec", {}).get("entrypoint", "")) for d in yaml.safe_load_all(text))
        text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
        for job, args in JOB_CALL.findall(text):
            calls += [(path.name, job, flag) for flag in re.findall(r"(?<!\S)(--[\w-]+)", args)]
            calls.append((path.name, job, "--help"))
    return sorted(set(calls))


@functools.cache
def job_flags(job: str) -> frozenset[str] | None:
    script = ROOT / "jobs" / f"{job}.py"
    if not script.exists():
        return None
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return frozenset(re.findall(r"(?<![\w-])--[a-z][\w-]*", out.stdout)) | {"--help"}


def test_the_cluster_files_call_every_job():
    jobs = {job for _, job, _ in job_calls()}
    assert jobs >= {"sft", "grpo", "map_region", "serve"}


@pytest.mark.parametrize("job", sorted({job for _, job, _ in job_calls()}))
def test_every_job_and_flag_named_in_the_cluster_files_exists(job):
    flags = job_flags(job)
    assert flags is not None, f"jobs/{job}.py does not exist (yet): the cluster files call it"
    missing = [(src, flag) for src, j, flag in job_calls() if j == job and flag not in flags]
    assert missing == [], f"flags not in `python jobs/{job}.py --help`"


def test_the_serve_app_import_path_exists():
    import importlib

    try:
        module = importlib.import_module("magseg_ray.serve")
    except ModuleNotFoundError:
        pytest.fail("magseg_ray.serve does not exist (yet): cluster/kuberay/rayservice-tiles.yaml serves magseg_ray.serve:app")
    assert callable(getattr(module, "app", None)), "magseg_ray.serve:app must be an application builder taking args"


# ---- container image -------------------------------------------------------------------------------

def test_dockerfile_installs_what_the_repository_holds():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"ARG RAY_IMAGE=rayproject/ray:(\S+)", text).group(1)
    py = PYPROJECT["project"]["requires-python"]
    assert base == f"{pinned('ray')}-py311-gpu" and ">=3.11" in py and "<3.12" in py
    copies = re.findall(r"^COPY(?: --chown=\S+)? (.+) (\S+)$", text, re.M)
    sources = [s for srcs, _ in copies for s in srcs.split()]
    assert {"pyproject.toml", "magseg_ray", "jobs"} <= set(sources)
    assert all((ROOT / s).exists() for s in sources), [s for s in sources if not (ROOT / s).exists()]
    install = text.index("pip install --no-cache-dir -e .")
    assert text.index("pyproject.toml") < install and text.index("magseg_ray ./magseg_ray") < install
    assert "torchvision" not in text  # its wheel would replace the pinned torch build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and not {"jobs", "magseg_ray", "pyproject.toml"} & set(ignored)


def test_launcher_images_are_the_project_version():
    for path in LAUNCHER:
        image = yaml.safe_load(path.read_text())["docker"]["image"]
        assert image.endswith(f"/magseg-ray:{PYPROJECT['project']['version']}"), (path.name, image)
