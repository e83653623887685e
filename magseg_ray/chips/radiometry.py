"""Radiometry: any scene's bands -> the 8-bit RGB a model was trained on. One home for the rule, used
by every reader (mapping, the tile server's chips and imagery, GeoSeg, training and packing).

- **Bands** (:func:`rgb_bands`): bands given by the caller (``--bands 3,2,1``) win; else the bands
  whose description names them (the STAC ``eo:bands`` common names ``red``, ``green``, ``blue``,
  and ``r``/``g``/``b``, any case); else those whose GDAL colour interpretation is red, green and
  blue; else the first three bands that are not alpha (fewer: band 1 as grey). So RGB, RGBN and BGRN files that say which band is which
  are read alike; an alpha band is never a colour: it (like nodata) marks pixels invalid.
- **Bit depth** (:func:`bit_depth`): the caller's (``--bit-depth 11``), else the file's ``NBITS``
  (GDAL's ``IMAGE_STRUCTURE`` metadata, as 11- and 12-bit vendor products carry it), else the
  pixel type's (8 for uint8, 16 for uint16).
- **Normalisation** (:data:`RADIOMETRIES`, recorded in the model card as ``radiometry``):
  ``full-range``: a value ``v`` of a ``b``-bit band becomes ``round(v * 255 / (2**b - 1))``, clipped
  to 0-255 (8 bits: as is), the same for every scene and chip, so an 11-bit product of the same
  ground looks as its 8-bit version; ``scene-percentile``: each band stretched linearly between the
  scene's 2nd and 98th percentiles (measured once per scene on its coarsest overview), which
  changes the colour balance from scene to scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError, SceneError

RADIOMETRIES = ("full-range", "scene-percentile")
"""How band values become 0-255 (see the module doc); a model card records the one its training used."""
PERCENTILES = (2.0, 98.0)
"""Percentiles mapped to 0 and 255 by ``scene-percentile``."""
COMMON_NAMES = {"red": "red", "r": "red", "green": "green", "g": "green", "blue": "blue", "b": "blue"}
"""Band descriptions (lower case, spaces and ``_-`` dropped) that name a colour."""


def check_radiometry(radiometry: str, bit_depth: int = 0) -> None:
    """Raise :class:`ConfigError` for an unknown radiometry or a bit depth outside 0 (the file's) - 16."""
    if radiometry not in RADIOMETRIES:
        raise ConfigError(f"radiometry {radiometry!r}: must be one of {', '.join(RADIOMETRIES)}")
    if not 0 <= bit_depth <= 16 or 0 < bit_depth < 2:
        raise ConfigError(f"bit depth {bit_depth}: must be 0 (the file's NBITS or pixel type) or 2-16")


def parse_bands(text: str) -> tuple[int, ...] | None:
    """``"3,2,1"`` -> ``(3, 2, 1)``; ``""`` -> None (the file says); :class:`ConfigError` otherwise."""
    if not text:
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise ConfigError(f"bands {text!r}: give three 1-based band indices for red, green, blue, e.g. 3,2,1")
    return bands


@dataclass(frozen=True)
class ReadFlags:
    """How a job reads its scenes: the flags of every job config that reads them (mapping, the tile
    server, training, GeoSeg), made into a :class:`~magseg_ray.chips.read.ReadConfig` by
    :meth:`read_config`."""

    bands: str = field(default="", metadata=doc(
        "1-based bands read as red,green,blue, e.g. 3,2,1; empty: each file's band descriptions or colour "
        "interpretation, else bands 1-3"))
    bit_depth: int = field(default=0, metadata=doc(
        "bits per band value of the scenes (e.g. 11); 0: each file's NBITS, else its pixel type's"))

    def read_config(self, card=None):
        """These flags with the radiometry of the model ``card`` (None: the default, full range)."""
        from magseg_ray.chips.read import ReadConfig

        if card is None:
            return ReadConfig(parse_bands(self.bands), self.bit_depth)
        return ReadConfig(parse_bands(self.bands), self.bit_depth, card.radiometry)


def rgb_bands(src, bands: tuple[int, ...] | None = None) -> list[int]:
    """The 1-based bands of the open raster ``src`` read as R, G, B (rule in the module doc)."""
    if bands is not None:
        if max(bands) > src.count:
            raise SceneError(f"{src.name}: bands {bands} requested but the scene has {src.count}")
        return list(bands)
    interp = [c.name for c in src.colorinterp]
    names = [COMMON_NAMES.get("".join(ch for ch in (d or "").lower() if ch not in " _-")) for d in src.descriptions]
    for labels in (names, interp):
        if all(colour in labels for colour in ("red", "green", "blue")):
            return [labels.index(colour) + 1 for colour in ("red", "green", "blue")]
    colours = [i + 1 for i, c in enumerate(interp) if c != "alpha"]
    return colours[:3] if len(colours) >= 3 else [1, 1, 1]


def bit_depth(src, override: int = 0) -> int:
    """Bits per value of ``src``'s bands: ``override``, else its ``NBITS``, else its pixel type's."""
    if override:
        return override
    nbits = src.tags(1, "IMAGE_STRUCTURE").get("NBITS")
    return int(nbits) if nbits else np.dtype(src.dtypes[0]).itemsize * 8


def to_uint8(data: np.ndarray, bits: int, radiometry: str, stretch: tuple | None = None) -> np.ndarray:
    """``bands x H x W`` values -> uint8 by ``radiometry``; ``stretch`` is the scene's per-band
    (low, high) for ``scene-percentile`` (:func:`scene_percentiles`)."""
    if radiometry == "scene-percentile":
        lo, hi = stretch
        scaled = (data - lo[:, None, None]) / (hi - lo)[:, None, None] * 255
    elif bits == 8 and data.dtype == np.uint8:
        return data
    else:
        scaled = data * (255 / (2**bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@lru_cache(maxsize=256)
def scene_percentiles(uri: str, bands: tuple[int, ...], store) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (low, high) of a scene at :data:`PERCENTILES`, from its coarsest overview (cached per process)."""
    from magseg_ray.chips.read import open_scene

    with open_scene(uri, store) as src:
        factor = max(src.overviews(1) or [1])
        shape = (len(bands), max(src.height // factor, 1), max(src.width // factor, 1))
        data = src.read(list(bands), out_shape=shape, masked=True)
    lo = np.array([np.percentile(b.compressed(), PERCENTILES[0]) if b.count() else 0 for b in data])
    hi = np.array([np.percentile(b.compressed(), PERCENTILES[1]) if b.count() else 1 for b in data])
    return lo, np.maximum(hi, lo + 1)
