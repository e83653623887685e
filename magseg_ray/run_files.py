"""A mapping run's folder, local or under an ``s3://`` prefix, and its per-chip outputs.

Written by the mapping job and its model actors, read by the stitcher, the reducer and the tile
server (precomputed maps). Beside :mod:`magseg_ray.files`, whose atomic writes it uses locally.

Every file is written whole or not at all: locally to a temporary name and then renamed, on S3 by
a single PUT. That is what makes a run resumable: a chip whose output file exists is finished, and
a run killed at any moment leaves only finished files behind.

Layout under the run root::

    run.json                      what the run maps (AOI, model, settings): a rerun must match it
    chips/<scene_id>/<row>_<col>.npz   per-chip classes (uint8, NO_DATA = 255), patch confidence and
                                  optional attributes of the objects it owns (a GeoSeg chip's query, ...)
    masks/<scene_id>.tif          stitched class raster of each scene (tiled GeoTIFF)
    fields/cell=<cell>/*.parquet  field polygons, GeoParquet partitioned by grid cell
    fields.gpkg, summary.json, failures.json, preview.png
    logs/ray.log                  Ray's own messages (a local run folder; not a run's output: see :func:`ray_log_file`)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tempfile
from pathlib import Path

import numpy as np

from magseg_ray.errors import OutputError
from magseg_ray.files import replace_atomically, write_atomic
from magseg_ray.scenes.store import ObjectStore, split_uri

LOGS = "logs/"
"""Folder of a local run's logs, which a run folder may hold before its ``run.json``."""


def ray_log_file(root: str) -> str:
    """Where a job's Ray messages go (:attr:`magseg_ray.cluster.RaySettings.log_file`): ``logs/ray.log``
    under a local run folder; under the system's temporary folder for an ``s3://`` one."""
    scheme, local = split_uri(root)
    if scheme == "file":
        return str(Path(local) / LOGS / "ray.log")
    return str(Path(tempfile.mkdtemp(prefix="magseg-ray-logs-")) / "ray.log")


class RunFiles:
    """Read and write a run's files by path relative to its root (a folder or ``s3://`` prefix)."""

    def __init__(self, root: str, store: ObjectStore | None = None):
        self.root = str(root)
        self.scheme, self.base = split_uri(root)
        self.store = store or ObjectStore()
        self._fs = self.store.filesystem(root) if self.scheme == "s3" else None

    def uri(self, rel: str) -> str:
        return f"s3://{self.base}/{rel}" if self.scheme == "s3" else os.path.join(self.base, rel)

    def write(self, rel: str, data: bytes | str) -> None:
        """Write ``data`` whole at ``rel``; :class:`OutputError` naming the file if it cannot be."""
        with self._io(rel):
            if self._fs is None:
                write_atomic(self.uri(rel), data)
            else:
                self._fs.pipe_file(f"{self.base}/{rel}", data.encode() if isinstance(data, str) else data)

    @contextlib.contextmanager
    def _io(self, rel: str, verb: str = "write"):
        """Turn a failed write (disk full, no permission) or any failed request to the object store
        (after s3fs's and botocore's retries) into an :class:`OutputError` naming the file."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (OSError, BotoCoreError, ClientError) as e:
            raise OutputError(f"cannot {verb} {self.uri(rel)}: {getattr(e, 'strerror', None) or e}") from e

    def read(self, rel: str) -> bytes:
        if self._fs is None:
            return Path(self.uri(rel)).read_bytes()
        with self._io(rel, "read"):
            return self._fs.cat_file(f"{self.base}/{rel}")

    def exists(self, rel: str) -> bool:
        if self._fs is None:
            return Path(self.uri(rel)).exists()
        with self._io(rel, "reach"):
            return self._fs.exists(f"{self.base}/{rel}")

    def listdir(self, rel: str) -> list[str]:
        """Relative paths of the files below ``rel`` (recursively), sorted."""
        if self._fs is None:
            top = Path(self.uri(rel))
            return sorted(str(p.relative_to(self.base)) for p in top.rglob("*") if p.is_file()
                          and not p.name.startswith(".")) if top.is_dir() else []
        with self._io(rel, "list"):
            found = self._fs.find(f"{self.base}/{rel}")
        return sorted(posixpath.relpath(f, self.base) for f in found)

    def write_with(self, rel: str, write) -> None:
        """Let ``write(local_path)`` make a file (e.g. GDAL/OGR writers), then put it at ``rel``."""
        with self._io(rel):
            if self._fs is None:
                replace_atomically(self.uri(rel), write)
                return
            with tempfile.TemporaryDirectory() as d:
                local = Path(d) / posixpath.basename(rel)
                write(local)
                self._fs.put_file(str(local), f"{self.base}/{rel}")

    def remove_tree(self, rel: str) -> None:
        if self._fs is None:
            import shutil

            shutil.rmtree(self.uri(rel), ignore_errors=True)
        elif self.exists(rel):
            with self._io(rel, "remove"):
                self._fs.rm(f"{self.base}/{rel}", recursive=True)


def chip_file(chip_id: str) -> str:
    """Relative path of a chip's output (chip ids are ``<scene_id>/<row>_<col>``)."""
    return f"chips/{chip_id}.npz"


def encode_chip(classes: np.ndarray, confidence: np.ndarray, patches: int, seconds: float,
                attributes: dict | None = None) -> bytes:
    """A chip's output; ``attributes`` (JSON-able: e.g. a GeoSeg chip's query, phrase, route and
    score) become the columns of the objects the chip owns (:func:`chip_attributes`)."""
    buf = io.BytesIO()
    extra = {"attributes": np.array(json.dumps(attributes))} if attributes is not None else {}
    np.savez_compressed(buf, classes=classes.astype(np.uint8), confidence=confidence.astype(np.float32),
                        patches=np.int64(patches), seconds=np.float64(seconds), **extra)
    return buf.getvalue()


def decode_chip(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}


def chip_attributes(files: "RunFiles", chip_id: str) -> dict:
    """The ``attributes`` a chip's output carries ({} for none)."""
    out = decode_chip(files.read(chip_file(chip_id)))
    return json.loads(str(out["attributes"])) if "attributes" in out else {}


def finished_chips(files: RunFiles) -> set[str]:
    """Chip ids whose output exists."""
    return {rel[len("chips/"):-len(".npz")] for rel in files.listdir("chips") if rel.endswith(".npz")}
