"""Read one chip window of a scene by range requests, as the RGB uint8 array prompts take.

:func:`read_chip` reads a chip task's square window; :func:`read_window` any window by the same
rules (GeoSeg's scene reads and the tile server's ``POST /segment`` use it).

Only the blocks under the window are fetched (``/vsis3/`` for ``s3://`` URIs; a COG's internal
tiling makes those few ranged GETs). Conversions, all documented on :class:`ReadConfig`:

- bands, bit depth and values: :mod:`magseg_ray.chips.radiometry` (the file's band descriptions
  and colour interpretation pick R, G, B; its ``NBITS`` or pixel type gives the bit depth; the
  model card's ``radiometry`` brings the values to 8 bits); uint8 and uint16 only;
- validity: pixels past the scene edge (windows are padded with zeros to full size), nodata and
  alpha-masked pixels, and pixels outside the AOI (when given) are marked invalid in ``Chip.valid``.
"""

from __future__ import annotations

import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.features import geometry_mask
from rasterio.transform import Affine
from rasterio.windows import Window

from magseg_ray.chips.radiometry import bit_depth, check_radiometry, rgb_bands, scene_percentiles, to_uint8
from magseg_ray.chips.windows import ChipTask
from magseg_ray.errors import SceneError
from magseg_ray.scenes.catalog import SUPPORTED_DTYPES
from magseg_ray.scenes.store import ObjectStore, read_retry, remote



@dataclass(frozen=True)
class ReadConfig:
    """How chips are read."""

    bands: tuple[int, ...] | None = None
    """1-based band indices read as R, G, B; None: what the file says (:func:`~magseg_ray.chips.radiometry.rgb_bands`)."""
    bit_depth: int = 0
    """Bits per band value; 0: the file's ``NBITS``, else its pixel type's."""
    radiometry: str = "full-range"
    """How values become 0-255 (:data:`~magseg_ray.chips.radiometry.RADIOMETRIES`): the model card's."""

    def __post_init__(self):
        check_radiometry(self.radiometry, self.bit_depth)


@dataclass
class Chip:
    """A chip's pixels and where they are."""

    task: ChipTask
    image: np.ndarray
    """``size x size x 3`` uint8 RGB."""
    valid: np.ndarray
    """``size x size`` bool: inside the scene, not nodata and inside the AOI."""


@contextmanager
def open_scene(uri: str, store: ObjectStore | None = None, **options: str):
    """Open a scene raster for windowed reads: ``/vsis3/`` (``/vsicurl/`` for ``http(s)://``) range
    requests inside the store's GDAL environment (``options`` added), a plain local open otherwise."""
    store = store or ObjectStore()
    with store.rasterio_env(**options) if remote(uri) else rasterio.Env():
        with rasterio.open(store.gdal_path(uri)) as src:
            yield src


def read_padded(src, bands: list[int], row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``height x width`` window at (row, col), zero-padded where it leaves the raster, and the
    mask of pixels inside the raster, not nodata and not transparent in an alpha band. (Rasterio's ``boundless`` reads go through a
    VRT that can resample at edges; this reads exactly the overlapping pixels.)"""
    data = np.zeros((len(bands), height, width), src.dtypes[0])
    inside = np.zeros((height, width), bool)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + height, src.height), min(col + width, src.width)
    if r1 > r0 and c1 > c0:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        data[:, r0 - row : r1 - row, c0 - col : c1 - col] = src.read(bands, window=window)
        ok = src.read_masks(bands[0], window=window) > 0
        for alpha in [i + 1 for i, c in enumerate(src.colorinterp) if c.name == "alpha"]:
            ok &= src.read(alpha, window=window) > 0  # an alpha band GDAL does not take as the mask
        inside[r0 - row : r1 - row, c0 - col : c1 - col] = ok
    return data, inside


TRANSIENT = re.compile(r"CURL error|HTTP response code: (429|5\d\d)|Connection (refused|reset)", re.I)
"""GDAL error text of a read that may succeed later (the store unreachable, throttling, a 5xx)."""
_SUSPECT: set[str] = set()
"""Scenes whose last read in this process met a transient error: read past GDAL's cache (which keeps
"does not exist" for a file it could not reach) until one read succeeds and refreshes it."""


def read_window(uri: str, row: int, col: int, height: int, width: int, config: ReadConfig = ReadConfig(),
                store: ObjectStore | None = None, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """A ``height x width`` window at (row, col) of a scene as RGB uint8 (band and dtype rules of the
    module doc; zeros past the edge and on nodata) and its validity mask; :class:`SceneError`
    naming ``name`` (default: the window) and the scene when it cannot be read. A transient error
    (:data:`TRANSIENT`) is retried as :data:`~magseg_ray.scenes.store.READ_RETRY` says; the error
    names the first cause, and the last if it differs."""
    retries, delay = read_retry()
    first, start = None, time.monotonic()
    for attempt in range(retries + 1):
        try:
            data, valid, bands, bits = _read_once(uri, row, col, height, width, config, store)
            _SUSPECT.discard(uri)
            break
        except rasterio.errors.RasterioError as e:
            down = _store_down(uri, store) if urlsplit(uri).scheme == "s3" else None
            e = f"{e}{f'; {down}' if down else ''}"
            first = first or e
            if not (TRANSIENT.search(e) or down) and uri not in _SUSPECT or attempt == retries:
                what = name or f"the {width}x{height} window at row {row}, col {col}"
                last = "" if e == first else (f" (still failing after {attempt} retries over "
                                              f"{time.monotonic() - start:.0f} s: {e})")
                raise SceneError(f"cannot read {what} from {uri}: {first}{last}") from None
            _SUSPECT.add(uri)
            time.sleep(delay * 2**attempt)
    stretch = scene_percentiles(uri, tuple(bands), store) if config.radiometry == "scene-percentile" else None
    image = np.moveaxis(to_uint8(data, bits, config.radiometry, stretch), 0, -1).copy()
    image[~valid] = 0
    return image, valid


def _store_down(uri: str, store: ObjectStore | None) -> str | None:
    """Why the object store of ``uri`` cannot be reached now (GDAL's error for a tile read of an open
    file does not say), else ``None``."""
    endpoint = urlsplit((store or ObjectStore()).endpoint_url or "https://s3.amazonaws.com")
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as e:
        return f"the object store at {endpoint.netloc} does not answer: {e.strerror or e}"
    return None


def _read_once(uri: str, row: int, col: int, height: int, width: int, config: ReadConfig, store):
    """One try of :func:`read_window`'s read: pixels, validity, bands and bit depth."""
    fresh = {"CPL_VSIL_CURL_NON_CACHED": (store or ObjectStore()).gdal_path(uri)} if uri in _SUSPECT else {}
    with open_scene(uri, store, **fresh) as src:
        dtype = src.dtypes[0]
        if dtype not in SUPPORTED_DTYPES:
            raise SceneError(f"{uri}: unsupported dtype {dtype} (supported: {', '.join(SUPPORTED_DTYPES)})")
        bands = rgb_bands(src, config.bands)
        return *read_padded(src, bands, row, col, height, width), bands, bit_depth(src, config.bit_depth)


def read_chip(task: ChipTask, config: ReadConfig = ReadConfig(), aoi_local=None,
              store: ObjectStore | None = None) -> Chip:
    """Read ``task``'s window from its scene (``store`` says where ``s3://`` URIs live).

    ``aoi_local`` is the AOI geometry in the scene's CRS, or None to keep every pixel valid. The
    task's catalogued ``bands`` (a STAC asset's red, green, blue) are read unless ``config`` names bands.
    """
    if task.bands and config.bands is None:
        config = replace(config, bands=task.bands)
    size = task.size
    image, valid = read_window(task.uri, task.row_off, task.col_off, size, size, config, store,
                               f"chip {task.chip_id}")
    if aoi_local is not None:
        valid &= ~geometry_mask([aoi_local], (size, size), Affine(*task.transform), all_touched=True)
    return Chip(task, image, valid)
