"""Shared fixtures: a local Ray cluster on 127.0.0.1 and the offline ``tiny`` Gemma3 model."""

import os

# Before anything imports Ray or transformers: loopback-only Ray, no telemetry, no hub.
from magseg_ray.cluster import LOOPBACK_ENV  # noqa: E402  (imports no Ray)

os.environ.update(LOOPBACK_ENV)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """A private Ray head on 127.0.0.1 (2 CPUs) with this test process connected as driver."""
    from magseg_ray.cluster import LocalRayCluster, RaySettings, ray_session

    with LocalRayCluster(num_cpus=2) as cluster, ray_session(RaySettings(address=cluster.address)):
        yield cluster


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The ``tiny`` preset saved as a checkpoint directory (hub layout)."""
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.presets import build_model

    model, processor = build_model("tiny")
    return save_model(model, processor, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 endpoint on 127.0.0.1 (HTTP, range requests honoured) with dummy credentials;
    counts the bytes it sends so tests can show that reads are partial."""
    from magseg_ray.scenes.local_s3 import LocalS3

    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory):
    """A tiny Gemma3 in the hub's folder layout, with a Gemma-kind tokenizer (tests/hub/gemma3.py)."""
    from tests.hub.gemma3 import make_gemma3

    return make_gemma3(tmp_path_factory.mktemp("gemma3"))
