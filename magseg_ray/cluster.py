"""Start or join a Ray cluster, bound to loopback when local, stopping only what we started.

Two ways in:

- :func:`ray_session` for a job's driver: join the cluster at ``address`` (or ``RAY_ADDRESS``, which
  ``ray job submit`` sets), else start a private in-process cluster on 127.0.0.1 that ends with the
  session, never the head ``ray start`` recorded as the machine's current cluster (a stale record
  of a killed head made every job fail). A laptop run and a cluster run are the same code.
- :class:`LocalRayCluster` for a standalone local head (what ``ray job submit --address
  http://127.0.0.1:8265`` talks to): ``ray start --head --block`` on chosen loopback ports, in its own
  process group, stopped by signalling that group alone. Nothing here ever runs ``ray stop``, which
  would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from magseg_ray.errors import ClusterError

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}
"""Environment of every process of a local cluster (see :func:`ray_environment`). The Serve proxy's
ready and health checks get 60 s instead of 5 and 10: on a laptop whose cores a training or mapping
job holds, the proxy answers late, and Serve would kill it as unhealthy (measured: ``serve.start``
failing with ``ActorDiedError`` on this 2-core machine while a training run used both cores)."""


@dataclass(frozen=True)
class RaySettings:
    """Where a job's Ray comes from."""

    address: str | None = None
    """Cluster to join (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``). ``None``: ``RAY_ADDRESS``
    if set, else start a private local cluster on 127.0.0.1 for the job's lifetime."""
    num_cpus: float | None = None
    """CPUs of a private local cluster (default: all cores). Ignored when joining."""
    object_store_memory: int | None = 512 * 2**20
    """Object store bytes of a private local cluster. Ignored when joining."""
    namespace: str = "magseg"
    """Ray namespace for named actors, so jobs of one project find each other."""
    gpus: float = 0.0
    """GPUs the job's flags ask for at once (0: none). A cluster that cannot give them is refused by
    :func:`ray_session`: at once for a private local cluster, which never gains one; after
    :attr:`gpu_wait_s` for a joined cluster, whose autoscaler may add GPU nodes."""
    gpu_flags: str = "--use-gpu"
    """The job's flags that ask for :attr:`gpus`, named in the refusal."""
    gpu_wait_s: float = 120.0
    """How long a joined cluster may take to show :attr:`gpus` GPUs (an autoscaler adding a node)."""


def ray_environment(address: str | None = None) -> None:
    """Decide Ray's environment for a driver that joins ``address`` (``None``: ``RAY_ADDRESS``, else a
    private local cluster), before Ray is imported. The one place that sets it.

    Ray reads its environment once, at import: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (without it
    Ray rewrites a loopback address to the machine's external IP) and ``RAY_AUTH_MODE``, which Ray
    otherwise turns on by itself whenever ``~/.ray/auth_token`` exists, so that a process imported
    with one mode starts or joins a cluster in the other (``InvalidAuthToken``, or a head that never
    comes up). A local cluster therefore gets :data:`LOOPBACK_ENV` (token auth, stated explicitly so
    that the head, drivers and ``ray job submit`` agree). A remote cluster's environment is left as
    the user set it. Raises :class:`ClusterError` if Ray was imported before this could decide.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not _is_loopback(address):
        return
    changed = sorted(k for k, v in LOOPBACK_ENV.items() if os.environ.get(k) != v)
    if changed and "ray" in sys.modules:
        raise ClusterError(
            f"Ray was imported before magseg_ray.cluster.ray_environment() set {', '.join(changed)}; "
            f"call it (or set {' '.join(f'{k}={LOOPBACK_ENV[k]}' for k in changed)}) before importing ray")
    os.environ.update(LOOPBACK_ENV)


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in (LOOPBACK, "localhost")


@contextlib.contextmanager
def ray_session(settings: RaySettings = RaySettings(), runtime_env: dict | None = None) -> Iterator[dict]:
    """Connect to (or start) Ray for the duration of the block; yields ``ray.cluster_resources()``."""
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        _require_gpus(settings, joined=True)
        yield sys.modules["ray"].cluster_resources()  # the caller's Ray: joined as it is, left running
        return
    ray_environment(address)
    import ray

    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, namespace=settings.namespace, runtime_env=runtime_env)
        else:  # "local": never the cluster `ray start` recorded, which may be dead or not ours
            _note_recorded_head()
            ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=settings.num_cpus,
                     object_store_memory=settings.object_store_memory, include_dashboard=False,
                     namespace=settings.namespace, runtime_env=runtime_env)
    except ConnectionError as e:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {e}") from e
    try:
        _require_gpus(settings, joined=bool(address))
        yield ray.cluster_resources()
    finally:
        ray.shutdown()


def _require_gpus(settings: RaySettings, joined: bool) -> None:
    """Refuse a cluster that cannot give the GPUs :attr:`RaySettings.gpus` asks for (Ray would queue the
    work forever); a joined cluster gets :attr:`RaySettings.gpu_wait_s` to add them."""
    import ray

    deadline = time.monotonic() + (settings.gpu_wait_s if joined else 0)
    have = ray.cluster_resources().get("GPU", 0)
    if have >= settings.gpus:
        return
    if joined:
        print(f"[ray] {settings.gpu_flags} asks for {settings.gpus:g} GPUs and the cluster has {have:g}; "
              f"waiting up to {settings.gpu_wait_s:.0f} s for its autoscaler to add them", file=sys.stderr, flush=True)
    while time.monotonic() < deadline and have < settings.gpus:
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0)))
        have = ray.cluster_resources().get("GPU", 0)
    if have < settings.gpus:
        where = (f"the cluster it joined still has {have:g} after {settings.gpu_wait_s:.0f} s" if joined
                 else f"this machine has {have:g} (a private local Ray gains none)")
        raise ClusterError(f"{settings.gpu_flags} asks for {settings.gpus:g} GPUs and {where}: drop the flag, "
                           "or pass --address of a cluster with GPUs")


def _note_recorded_head() -> None:
    """Say so when ``ray start`` recorded a head as the machine's current cluster: ``ray.init()`` without
    an address would join it (or die on a stale record); a job starts its own unless told to join."""
    from ray._private.utils import read_ray_address

    recorded = read_ray_address()
    if recorded:
        print(f"[ray] starting a private local Ray for this job; to run on the head that `ray start` "
              f"recorded at {recorded} instead, pass --address {recorded} (or set RAY_ADDRESS)",
              file=sys.stderr, flush=True)


def _check_reachable(address: str) -> None:
    """Fail fast on a head that is not there (``ray.init`` would retry for minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {e}") from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """A Ray head on 127.0.0.1 with explicit ports, owned and stopped by this object.

    Use as a context manager. ``address`` is the GCS address for ``ray.init``; ``dashboard_url`` is
    the Jobs API endpoint for ``ray job submit --address``.
    """

    def __init__(self, num_cpus: int | None = None, port: int | None = None,
                 dashboard_port: int | None = None, object_store_memory: int = 512 * 2**20,
                 start_timeout: float = 90.0):
        self.port = port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._tmp: str | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def start(self) -> LocalRayCluster:
        # Ray's socket paths must stay short (AF_UNIX limit), so use a short private temp dir.
        self._tmp = tempfile.mkdtemp(prefix="mr", dir="/tmp")
        ports = [free_port() for _ in range(4)]
        cmd = [
            str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
            f"--node-ip-address={LOOPBACK}", f"--port={self.port}",
            "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={ports[0]}", f"--dashboard-agent-grpc-port={ports[1]}",
            f"--metrics-export-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
            f"--ray-client-server-port={free_port()}",
            f"--object-store-memory={self.object_store_memory}", f"--temp-dir={self._tmp}",
            "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        # jobs submitted to this head run `python` from this interpreter's environment
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = dict(os.environ, **LOOPBACK_ENV, PATH=path)
        env.pop("RAY_ADDRESS", None)
        # `ray start` with token auth needs a token and, unlike ray.init, never makes one (on a fresh
        # HOME the head exits: "no authentication token was found"); `--generate` keeps an existing one
        token = subprocess.run([cmd[0], "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
        if token.returncode:
            raise ClusterError(f"cannot make a Ray auth token for the local head (ray get-auth-token --generate, "
                               f"exit {token.returncode}):\n{token.stderr[-2000:]}")
        self._log = open(Path(self._tmp) / "head.log", "wb")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ClusterError(f"ray head exited with code {self._proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2):
                    return
            except urllib.error.HTTPError:  # answering (401 when Ray's token auth is on): up
                return
            except OSError:
                time.sleep(0.5)
        log = self._log_tail()
        self.stop()
        raise ClusterError(f"ray head on {self.address} not ready after {self.start_timeout:.0f} s:\n{log}")

    def _log_tail(self) -> str:
        return (Path(self._tmp) / "head.log").read_text(errors="replace")[-2000:]

    def pids(self) -> list[int]:
        """Live processes of this cluster (the head's process group; zombies left out)."""
        import psutil

        if self._proc is None:
            return []
        out = []
        for p in psutil.process_iter(["pid", "status"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == self._proc.pid:
                    out.append(p.pid)
        return out

    def stop(self) -> None:
        """Stop this cluster's processes (its process group) and remove its temp dir."""
        if self._proc is None:
            return
        pgid = self._proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None
        self._log.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
