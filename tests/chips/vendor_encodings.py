"""One 8-bit RGB scene re-encoded as vendors ship imagery, to test that every encoding reads alike.

    python tests/chips/vendor_encodings.py SCENE.tif OUT_DIR [--names u8,rgbn11,...]

Each encoding ``NAME`` is written as ``OUT_DIR/NAME/<scene id>.tif`` (a COG on the scene's grid),
with the scene's ``.labels.tif`` and ``.fields.gpkg`` beside it when they exist, so each folder is a
catalog the jobs take. The pixels are the scene's 8-bit values ``x`` (NIR: a made-up band, the mean of
red and green):

========== ======================================================================================
u8         uint8 RGB, as the scene is
rgbn11     uint16 R,G,B,NIR = ``8x + 20`` clipped to 2047, ``NBITS=11`` (an 11-bit vendor product)
rgbn12     uint16 R,G,B,NIR = ``16x + 20`` clipped to 4095, ``NBITS=12``
rgbn16     uint16 R,G,B,NIR = ``257x`` (the full 16-bit range)
bgrn11     as rgbn11 in the order B,G,R,NIR
alpha11    as rgbn11 plus an alpha band that hides the top left quarter
nodata11   as rgbn11 with nodata 0, written over the top left quarter
========== ======================================================================================

Every band carries its STAC ``eo:bands`` common name as its description (red, green, blue, nir);
the alpha band's colour interpretation is alpha. The 11-bit ``8x + 20`` is the issue's case.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp

ENCODINGS = ("u8", "rgbn11", "rgbn12", "rgbn16", "bgrn11", "alpha11", "nodata11")


def encode(rgb: np.ndarray, name: str) -> tuple[np.ndarray, list[str], dict]:
    """``(bands, descriptions, profile extras)`` of the encoding ``name`` of ``3 x H x W`` uint8 ``rgb``."""
    if name == "u8":
        return rgb, ["red", "green", "blue"], {}
    x = np.concatenate([rgb, ((rgb[0].astype(np.uint16) + rgb[1]) // 2)[None]]).astype(np.int64)
    bits = {"rgbn12": 12, "rgbn16": 16}.get(name, 11)
    values = x * 257 if bits == 16 else np.minimum(x * (2 ** (bits - 8)) + 20, 2**bits - 1)
    data, names = values.astype(np.uint16), ["red", "green", "blue", "nir"]
    extra = {"NBITS": bits} if bits < 16 else {}
    if name == "bgrn11":
        data, names = data[[2, 1, 0, 3]], ["blue", "green", "red", "nir"]
    h, w = rgb.shape[1:]
    if name == "alpha11":
        alpha = np.full((1, h, w), 2047, np.uint16)
        alpha[0, : h // 2, : w // 2] = 0
        data, names = np.concatenate([data, alpha]), names + ["alpha"]
    if name == "nodata11":
        data[:, : h // 2, : w // 2] = 0
        extra["nodata"] = 0
    return data, names, extra


def write_encoding(scene: Path, out: Path, name: str) -> Path:
    """Write encoding ``name`` of ``scene`` (and its label sidecars) under ``out/name``; returns the image path."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        rgb, profile = src.read([1, 2, 3]), src.profile
    data, names, extra = encode(rgb, name)
    nbits = extra.pop("NBITS", None)
    profile = {k: profile[k] for k in ("width", "height", "crs", "transform")}
    profile.update(driver="COG", count=len(data), dtype=data.dtype.name, blocksize=256, compress="deflate", **extra)
    if nbits:
        profile["NBITS"] = nbits
    path = folder / scene.name
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(names)
        if "alpha" in names:
            dst.colorinterp = [ColorInterp.undefined] * (len(names) - 1) + [ColorInterp.alpha]
    stem = scene.name[: -len(".tif")]
    for suffix in (".labels.tif", ".fields.gpkg"):
        if (scene.parent / f"{stem}{suffix}").exists():
            shutil.copy2(scene.parent / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--names", default=",".join(ENCODINGS))
    args = p.parse_args()
    for name in args.names.split(","):
        print(write_encoding(args.scene, args.out, name))


if __name__ == "__main__":
    main()
