"""Start or join a Ray cluster, bound to loopback when local, stopping only what we started.

Two ways in:

- :func:`ray_session` for a job's driver: join the cluster at ``address`` (or ``RAY_ADDRESS``, which
  ``ray job submit`` sets), else start a private in-process cluster on 127.0.0.1 that ends with the
  session, never the head ``ray start`` recorded as the machine's current cluster (a stale record
  of a killed head made every job fail). A laptop run and a cluster run are the same code. A
  reaper process (:func:`reap`) ends every process of that private cluster when the driver ends,
  even by SIGKILL: Ray's own agents would outlive it by a minute (measured: 60 s, waiting on
  the dead GCS to hear that their raylet died).
- :class:`LocalRayCluster` for a standalone local head (what ``ray job submit --address
  http://127.0.0.1:8265`` talks to): ``ray start --head --block`` on chosen loopback ports, in its own
  process group, stopped by signalling that group alone. Nothing here ever runs ``ray stop``, which
  would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from magseg_ray.errors import ClusterError

LOOPBACK = "127.0.0.1"
READER_CPUS = 0.5
"""CPUs a job's Ray Data chip reader reserves (:mod:`magseg_ray.chips.pipeline`'s ``read_cpus``)."""
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
    """CPUs of a private local cluster (default: all cores, or :attr:`reserved_cpus` where more). Ignored
    when joining."""
    reserved_cpus: float = 0.0
    """CPUs the job's workers and actors reserve at once. A private local cluster counts at least these
    plus :data:`READER_CPUS`, so a job at its default flags runs on a laptop with fewer cores, sharing
    them (said on stderr), where it would wait forever for a CPU (measured: ``sft.py``'s 2 workers x 1
    CPU on this 2-core machine never reached step 1 in 11 minutes, its chip reader starved)."""
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
    log_file: str | None = None
    """File that Ray's own messages go to instead of the terminal: its log lines, Ray Data's progress and
    execution logs; workers' output is then not forwarded (it stays in the session's log folder, which
    the file's first line names). ``None``: the terminal, as Ray prints them (a job's ``--verbose``)."""


def add_ray_arguments(parser) -> None:
    """A job's Ray flags: ``--address`` and ``--verbose`` (:attr:`RaySettings.log_file` ``None``)."""
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--verbose", action="store_true",
                        help="Ray's own logs on the terminal (default: logs/ray.log in the run's folder)")


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


def _local_cpus(settings: RaySettings) -> float | None:
    """CPUs of a private local cluster: :attr:`RaySettings.num_cpus`, else the cores, or the job's
    reservations and its readers' share where those are more (then said on stderr)."""
    if settings.num_cpus is not None or not settings.reserved_cpus:
        return settings.num_cpus
    cores, need = os.cpu_count() or 1, math.ceil(settings.reserved_cpus + READER_CPUS)
    if need <= cores:
        return None
    print(f"[ray] the job's workers and actors reserve {settings.reserved_cpus:g} CPUs and its readers "
          f"{READER_CPUS:g}; this machine has {cores} cores: its local Ray counts {need}, so they share them",
          file=sys.stderr, flush=True)
    return float(need)


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
    with _ray_logs_to(settings.log_file):
        yield from _session(settings, address, runtime_env)


def _session(settings: RaySettings, address: str | None, runtime_env: dict | None) -> Iterator[dict]:
    import ray

    if address and address != "auto":
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, namespace=settings.namespace, runtime_env=runtime_env,
                     log_to_driver=not settings.log_file)
        else:  # "local": never the cluster `ray start` recorded, which may be dead or not ours
            _note_recorded_head()
            reaper = _start_reaper()
            try:
                ray.init(address="local", _node_ip_address=LOOPBACK, num_cpus=_local_cpus(settings),
                         object_store_memory=settings.object_store_memory, include_dashboard=False,
                         namespace=settings.namespace, runtime_env=runtime_env, log_to_driver=not settings.log_file)
            except BaseException:
                os.close(reaper)
                raise
            finally:
                os.environ.pop(REAPER_MARK, None)  # the cluster's processes carry it, not the driver's later children
    except ConnectionError as e:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {e}") from e
    try:
        _note_session_logs(settings.log_file)
        _require_gpus(settings, joined=bool(address))
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        if not address:
            os.close(reaper)


@contextlib.contextmanager
def _ray_logs_to(log_file: str | None) -> Iterator[None]:
    """Send the driver's Ray log lines to ``log_file`` for the block (nothing changes for ``None``): the
    ``ray`` logger's handlers swapped for the file, Ray Data's logger sent up to it (its
    ``RAY_DATA_LOGGING_CONFIG``, read when Ray Data is imported) and its progress bars off (the job
    shows its own line, :mod:`magseg_ray.progress`). Restored after the block."""
    if not log_file:
        yield
        return
    import logging

    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_config = path.with_name("ray-data-logging.json")
    data_config.write_text('{"version": 1, "loggers": {"ray.data": {"level": "INFO", "handlers": [], "propagate": true}}}\n')
    env = {"RAY_DATA_LOGGING_CONFIG": str(data_config), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import ray  # noqa: F401  (configures the "ray" logger, which is then redirected)

    logger = logging.getLogger("ray")
    saved = logger.handlers[:]
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers = [handler]
    print(f"[ray] Ray's own logs: {path} (--verbose: here instead)", file=sys.stderr, flush=True)
    terminal, saved_stderr = _stderr_fd_to(path)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr.close()
        sys.stderr = saved_stderr
        logger.handlers = saved
        handler.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _stderr_fd_to(path: Path) -> tuple[int, object]:
    """Point file descriptor 2 at ``path`` (what Ray's C++ core writes there, such as its warnings about
    actors, lands in the log) and ``sys.stderr`` at a copy of the old one (this process's own messages
    still reach the terminal). Returns that copy and the old ``sys.stderr``, to undo it."""
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)
    saved = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, errors=saved.errors)
    return terminal, saved


def _note_session_logs(log_file: str | None) -> None:
    """Name the Ray session's own log folder (raylet, workers' output) at the top of ``log_file``."""
    if not log_file:
        return
    import logging

    import ray

    node = ray._private.worker._global_node  # no public way to the session folder of a driver
    where = f"{node.get_session_dir_path()}/logs" if node is not None else "on the cluster's head node"
    logging.getLogger("ray").info("Ray session logs (raylet, GCS, workers' output): %s", where)


REAPER_MARK = "MAGSEG_PRIVATE_RAY"
"""Environment variable that every process of a private local Ray carries (its value: that cluster's
own token): set while ``ray.init`` starts the head, inherited by the raylet's workers and agents."""


def _start_reaper() -> int:
    """Start :func:`reap` for the private cluster about to start, and mark the environment its processes
    will inherit. Returns the pipe's write end, which only this process holds: closing it, or dying,
    tells the reaper to end the cluster."""
    token = uuid.uuid4().hex
    read, write = os.pipe()
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    subprocess.Popen([sys.executable, "-m", "magseg_ray.cluster", token, str(os.getpid())], stdin=read, env=env,
                     stdout=subprocess.DEVNULL, start_new_session=True)  # its own session: no terminal signals
    os.close(read)
    os.environ[REAPER_MARK] = token
    return write


def reap(token: str, driver: int, grace_s: float = 2.0) -> None:
    """Wait until the driver closes its end of stdin (at the end of its session, or by dying), then stop
    every process that carries ``REAPER_MARK=token`` (SIGTERM, SIGKILL after ``grace_s``)."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()
    mark = f"{REAPER_MARK}={token}".encode()
    procs = []
    for pid in set(psutil.pids()) - {os.getpid(), driver}:
        with contextlib.suppress(psutil.Error):
            if mark in _environ(pid):
                procs.append(psutil.Process(pid))
                procs[-1].terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


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


def _environ(pid: int) -> list[bytes]:
    """A process's environment as ``NAME=value`` entries, read from ``/proc`` (psutil's ``environ()``
    reads none of a Ray process's: its renamed title zeroes the start of the block)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


if __name__ == "__main__":  # the reaper of a private local cluster (:func:`_start_reaper`)
    reap(sys.argv[1], int(sys.argv[2]))
