"""Files that are never half-written: every output goes to a temporary name, then into place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Let ``write`` make a temporary file next to ``path``, then move it there in one step.

    The temporary name keeps ``path``'s suffix (GDAL drivers check it). If ``write`` fails, the
    old file at ``path`` (if any) is untouched and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    raw = data.encode() if isinstance(data, str) else data
    return replace_atomically(path, lambda tmp: tmp.write_bytes(raw))


def local_absolute(path: str) -> str:
    """``path`` as an absolute path if it names something on this machine's disk, else unchanged.

    Configs hold paths the way users type them, relative to where they ran the job, but Ray Train
    workers and actors run in other directories: a relative model folder would be found by the
    driver's checks and then be missing on every worker. URLs (``s3://...``), preset names and
    paths that do not exist (left for the config checks to report as given) stay as they are.
    """
    if not path or "://" in path or not Path(path).exists():
        return path
    return str(Path(path).resolve())
