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


import threading  # noqa: E402
from pathlib import Path  # noqa: E402


class _CountingApp:
    """WSGI middleware that counts the response body bytes a server sends."""

    def __init__(self, app):
        self.app, self.sent = app, 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        try:
            for chunk in body:
                with self._lock:
                    self.sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()


class S3Server:
    """A moto S3 server on 127.0.0.1 as the tests see it."""

    def __init__(self, endpoint_url, counter):
        from magseg_ray.scenes.store import ObjectStore

        self.endpoint_url = endpoint_url
        self.store = ObjectStore(endpoint_url, "us-east-1", "testing", "testing")
        self._counter = counter

    @property
    def sent_bytes(self):
        """Response body bytes the server has sent so far (take differences around a read)."""
        return self._counter.sent

    def upload(self, local, bucket, prefix=""):
        """Create ``bucket`` if needed and put the file ``local``, or every file in the folder
        ``local``, under ``prefix``; return ``s3://bucket/prefix``."""
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.store.region,
            aws_access_key_id=self.store.access_key_id,
            aws_secret_access_key=self.store.secret_access_key,
        )
        s3.create_bucket(Bucket=bucket)  # us-east-1: creating an owned bucket again is a no-op
        local = Path(local)
        for path in [local] if local.is_file() else sorted(p for p in local.iterdir() if p.is_file()):
            s3.upload_file(str(path), bucket, "/".join(filter(None, (prefix.strip("/"), path.name))))
        return "s3://" + "/".join(filter(None, (bucket, prefix.strip("/"))))


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 endpoint on 127.0.0.1 (HTTP, range requests honoured) with dummy credentials;
    counts the bytes it sends so tests can show that reads are partial."""
    from moto.server import ThreadedMotoServer

    from magseg_ray.cluster import LOOPBACK, free_port

    server = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
    server.start()
    try:
        counter = _CountingApp(server._server.app)  # moto has no hook for this: wrap its WSGI app
        server._server.app = counter
        yield S3Server(f"http://{LOOPBACK}:{server.get_host_and_port()[1]}", counter)
    finally:
        server.stop()
