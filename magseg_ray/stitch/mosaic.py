"""Chip outputs -> one class raster per scene, with a fixed rule for chip overlaps.

Overlap rule: chips lie on a regular grid (stride = chip size - overlap), and each overlap strip is
split down its middle: a pixel is taken from the chip whose own centre is nearer along that axis,
i.e. a chip keeps ``[overlap // 2, size - (overlap - overlap // 2))`` of its window on every side
where a neighbouring chip exists, and its full extent where none does (scene or AOI edge). The
kept parts tile the mapped area exactly once, and every kept pixel is at least ``overlap // 2``
pixels away from its chip's border, where the model saw the least context.

Pixels that no chip answered (outside the AOI, nodata, failed chips) stay :data:`NO_DATA`.
"""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import Affine

from magseg_ray.chips.windows import ChipConfig
from magseg_ray.masks.schemas import NO_DATA, Schema
from magseg_ray.run_files import RunFiles, chip_file, decode_chip


def kept_window(row: int, col: int, offsets: set[tuple[int, int]], config: ChipConfig) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the part of chip ``(row, col)`` kept in the mosaic, in chip
    pixels (end-exclusive); ``offsets`` holds the ``(row, col)`` of every chip of the scene."""
    size, stride, lead = config.chip_size, config.stride, config.overlap // 2
    trail = config.overlap - lead
    top = lead if (row - stride, col) in offsets else 0
    bottom = size - trail if (row + stride, col) in offsets else size
    left = lead if (row, col - stride) in offsets else 0
    right = size - trail if (row, col + stride) in offsets else size
    return top, bottom, left, right


def paste(target: np.ndarray, origin: tuple[int, int], row: int, col: int, values: np.ndarray,
          offsets: set[tuple[int, int]], config: ChipConfig) -> None:
    """Write the kept part of chip ``(row, col)``'s ``values`` (chip-sized) into ``target``, a raster
    whose top-left pixel is scene pixel ``origin``; what falls outside ``target`` is left out."""
    top, bottom, left, right = kept_window(row, col, offsets, config)
    r0, c0 = row - origin[0], col - origin[1]
    top, left = max(top, -r0), max(left, -c0)
    bottom, right = min(bottom, target.shape[0] - r0), min(right, target.shape[1] - c0)
    if bottom > top and right > left:
        target[r0 + top : r0 + bottom, c0 + left : c0 + right] = values[top:bottom, left:right]


def stitch_scene(files: RunFiles, chip_ids: list[str], height: int, width: int, config: ChipConfig,
                 patch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The scene's class raster (uint8, :data:`NO_DATA` where unmapped), a per-pixel confidence
    raster (float32, NaN where unmapped) and the number of patches answered, from the outputs of
    ``chip_ids`` (``<scene>/<row>_<col>``)."""
    classes = np.full((height, width), NO_DATA, np.uint8)
    confidence = np.full((height, width), np.nan, np.float32)
    patches = 0
    offsets = {tuple(int(v) for v in c.rsplit("/", 1)[1].split("_")) for c in chip_ids}
    for chip_id in sorted(chip_ids):
        row, col = (int(v) for v in chip_id.rsplit("/", 1)[1].split("_"))
        out = decode_chip(files.read(chip_file(chip_id)))
        patches += int(out["patches"])
        conf = np.repeat(np.repeat(out["confidence"], patch_size, 0), patch_size, 1)
        paste(classes, (0, 0), row, col, out["classes"], offsets, config)
        paste(confidence, (0, 0), row, col, conf, offsets, config)
    return classes, confidence, patches


def owner_chips(chip_ids: list[str], rows: np.ndarray, cols: np.ndarray, config: ChipConfig) -> list[str | None]:
    """The chip :func:`stitch_scene` takes each scene pixel ``(rows[i], cols[i])`` from (the last, in
    its order, whose kept window holds it: where a chip is missing its neighbours' windows overlap);
    None where no chip of ``chip_ids`` holds it."""
    origins = {tuple(int(v) for v in c.rsplit("/", 1)[1].split("_")): c for c in chip_ids}
    offsets = set(origins)
    in_order = sorted(origins.items(), key=lambda o: o[1])
    kept = [(row + t, row + b, col + l, col + r, chip_id) for (row, col), chip_id in in_order
            for t, b, l, r in [kept_window(row, col, offsets, config)]][::-1]
    return [next((k[4] for k in kept if k[0] <= y < k[1] and k[2] <= x < k[3]), None) for y, x in zip(rows, cols)]


def write_mask(files: RunFiles, rel: str, classes: np.ndarray, transform: Affine, crs: str, schema: Schema) -> None:
    """A scene's class raster as a tiled GeoTIFF with a colour table and :data:`NO_DATA` as nodata (QGIS shows
    it in the schema's colours)."""

    def write(path) -> None:
        profile = dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, width=classes.shape[1], height=classes.shape[0], count=1, dtype="uint8",
                       crs=crs, transform=transform, nodata=NO_DATA, compress="deflate")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(classes, 1)
            dst.write_colormap(1, {i: (*c.color, 255) for i, c in enumerate(schema.classes)})
            dst.update_tags(1, classes=",".join(f"{i}={c.name}" for i, c in enumerate(schema.classes)))

    files.write_with(rel, write)
