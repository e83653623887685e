"""Precomputed ``map_region`` outputs as a tile source.

A run folder (or ``s3://`` prefix, see :mod:`magseg_ray.run_files`) is accepted when its
``run.json`` names the server's model (same weights fingerprint): its maps are what the model
would answer. A run *covers* a scene under a tile when its ``masks/<scene>.tif`` has data on every
pixel of the tile's window in that scene (the scene-grid bounding box of the tile); the tile's
classes for that scene are then read from the mask (a windowed read) and its fields from the run's
``fields/`` GeoParquet. Anywhere else (outside the run's AOI, the scene's nodata, a failed chip)
the model computes the tile on demand.

A run's fields are read once per replica and kept in memory with a spatial index: fine for a
region; a country-wide map would want its GeoParquet ``bbox`` column filtered per tile instead.
"""

from __future__ import annotations

import json
import math
import threading

import geopandas as gpd
import numpy as np
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from magseg_ray.chips.read import open_scene
from magseg_ray.errors import ConfigError
from magseg_ray.masks.schemas import NO_DATA
from magseg_ray.run_files import RunFiles


class MapRuns:
    """The ``map_region`` runs a server may answer from, tried in the order given."""

    def __init__(self, roots: list[str], model_fingerprint: str, store=None):
        self.store = store
        self.runs: list[RunFiles] = []
        for root in roots:
            files = RunFiles(root, store)
            if not files.exists("run.json"):
                raise ConfigError(f"--maps {root!r} is not a map_region output (no run.json)")
            identity = json.loads(files.read("run.json"))
            if identity.get("model") != model_fingerprint:
                raise ConfigError(f"--maps {root!r} was mapped by another model (fingerprint {identity.get('model')}, "
                                  f"this server's is {model_fingerprint}): serve it with that model")
            self.runs.append(files)
        self._fields: dict[str, gpd.GeoDataFrame] = {}
        self._lock = threading.Lock()

    def window(self, scene: dict, tile) -> tuple[np.ndarray, Affine, str] | None:
        """``(classes, transform, run root)`` of the first run whose mask of ``scene`` covers the
        tile (see module doc), else None."""
        from magseg_ray.serve.tiles import WEB_MERCATOR

        rel = f"masks/{scene['id']}.tif"
        for files in self.runs:
            if not files.exists(rel):
                continue
            with open_scene(files.uri(rel), self.store) as src:
                left, bottom, right, top = transform_bounds(WEB_MERCATOR, src.crs, *tile.xy_bounds, densify_pts=21)
                t = src.transform
                col0, col1 = math.floor((left - t.c) / t.a), math.ceil((right - t.c) / t.a)
                row0, row1 = math.floor((top - t.f) / t.e), math.ceil((bottom - t.f) / t.e)
                col0, row0 = max(col0, 0), max(row0, 0)
                col1, row1 = min(col1, src.width), min(row1, src.height)
                if col1 <= col0 or row1 <= row0:
                    continue
                classes = src.read(1, window=Window(col0, row0, col1 - col0, row1 - row0))
                if (classes == NO_DATA).any():
                    continue
                return classes, t @ Affine.translation(col0, row0), files.root
        return None

    def fields(self, root: str) -> gpd.GeoDataFrame:
        """Every field of the run at ``root`` (read once, then kept)."""
        from magseg_ray.fields.write import read_fields

        with self._lock:
            if root not in self._fields:
                files = next(f for f in self.runs if f.root == root)
                self._fields[root] = read_fields(files)
            return self._fields[root]
