"""A real S3 HTTP endpoint on 127.0.0.1 for tests, demos and benchmarks (moto's server).

It honours range requests like any S3, so code paths are the production ones; it also counts
the response bytes it sends, so a test or benchmark can show how much of an object a read pulled.
Needs the ``test`` extra (``moto[server]``); production uses any S3-compatible store.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from magseg_ray.cluster import LOOPBACK, free_port
from magseg_ray.scenes.store import ObjectStore


class _CountingApp:
    """WSGI middleware that counts the requests a server answers and the response body bytes it sends."""

    def __init__(self, app):
        self.app, self.sent, self.requests = app, 0, 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.requests += 1
        body = self.app(environ, start_response)
        try:
            for chunk in body:
                with self._lock:
                    self.sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()


class LocalS3:
    """moto's S3 server on a free loopback port, with dummy credentials; a context manager."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.store = ObjectStore(self.endpoint_url, "us-east-1", "testing", "testing")
        self._server = None
        self._counter: _CountingApp | None = None

    def start(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)
        self._server.start()
        # moto has no hook for counting: wrap its WSGI app (private attribute; moto is pinned)
        self._counter = _CountingApp(self._server._server.app)
        self._server._server.app = self._counter
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def sent_bytes(self) -> int:
        """Response body bytes the server has sent so far (take differences around a read)."""
        return self._counter.sent

    @property
    def requests(self) -> int:
        """Requests the server has answered so far (HEAD, GET, PUT, ...)."""
        return self._counter.requests

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.store.region,
                            aws_access_key_id=self.store.access_key_id,
                            aws_secret_access_key=self.store.secret_access_key)

    def upload(self, local: str | Path, bucket: str, prefix: str = "") -> str:
        """Create ``bucket`` if needed and put the file ``local``, or every file in the folder
        ``local``, under ``prefix``; return ``s3://bucket/prefix``."""
        s3 = self.client()
        s3.create_bucket(Bucket=bucket)  # us-east-1: creating an owned bucket again is a no-op
        local = Path(local)
        for path in [local] if local.is_file() else sorted(p for p in local.iterdir() if p.is_file()):
            s3.upload_file(str(path), bucket, "/".join(filter(None, (prefix.strip("/"), path.name))))
        return "s3://" + "/".join(filter(None, (bucket, prefix.strip("/"))))
