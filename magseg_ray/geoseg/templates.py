"""A small GeoSeg benchmark made from labelled scenes: queries from templates over the fields.

For each scene with an instance label raster (``<id>.tif`` + ``<id>.labels.tif``, the layout of
the synthetic and NAIP scene folders), the ``per_scene`` windows of ``window`` px with the most
field pixels (on a non-overlapping grid) become images, and each window gets one item per
template whose target exists. Fields are the label instances clipped to the window, at least
``min_pixels`` px. Levels are the paper's (GeoSeg-Bench: explicit, relations, implicit intent):

- **L1** (explicit: the object named by its attribute or place): "the largest field", "the
  smallest field", "the field at the top left / top right / bottom left / bottom right / in the
  centre of the image" (the field whose centroid is nearest that point);
- **L2** (relations: the object named through another one or the image frame): "the field just
  below / just right of the largest field" (nearest centroid in that half-plane), "the fields
  touching the left edge of the image" (their union);
- **L3** (implicit intent: a need is stated, the object is not named by what picks it):
  :data:`INTENTS`, each the target of an L1 or L2 query, asked as what a farmer wants.

The folder written: ``images/<window>.tif`` (RGB, georeferenced), ``masks/<item>.tif`` (0/1),
``items.jsonl`` (``id, image, mask, query, level, box`` with the truth box in pixels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from scipy import ndimage

LEVELS = ("L1", "L2", "L3")
INTENTS = {
    "the field that needs the most seed to sow": "the largest field",
    "the field a farmer could finish harvesting first": "the smallest field",
    "the fields a tractor entering from the left side of the image reaches without crossing another field":
        "the fields touching the left edge of the image",
}
"""L3 queries (implicit intent) and the L1/L2 query whose target each one has."""
CORNERS = {"at the top left": (0, 0), "at the top right": (1, 0), "at the bottom left": (0, 1),
           "at the bottom right": (1, 1), "in the centre of the image": (0.5, 0.5)}


def window_fields(labels: np.ndarray, min_pixels: int) -> dict[int, np.ndarray]:
    """{instance id: mask} of the label instances in a window with at least ``min_pixels`` px."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return {int(i): labels == i for i, c in zip(ids, counts) if c >= min_pixels}


def _centroids(fields: dict[int, np.ndarray]) -> dict[int, tuple[float, float]]:
    return {i: tuple(ndimage.center_of_mass(m)[::-1]) for i, m in fields.items()}  # (x, y)


def _nearest(cands: dict[int, tuple[float, float]], x: float, y: float) -> int | None:
    return min(cands, key=lambda i: (cands[i][0] - x) ** 2 + (cands[i][1] - y) ** 2) if cands else None


def template_targets(fields: dict[int, np.ndarray], size: int) -> list[tuple[str, str, list[int]]]:
    """(level, query, instance ids) for every template that has a target in the window."""
    if not fields:
        return []
    area = {i: int(m.sum()) for i, m in fields.items()}
    cent = _centroids(fields)
    largest, smallest = max(area, key=area.get), min(area, key=area.get)
    out = [("L1", "the largest field", [largest])]
    if smallest != largest:
        out.append(("L1", "the smallest field", [smallest]))
    for words, (fx, fy) in CORNERS.items():
        out.append(("L1", f"the field {words}", [_nearest(cent, fx * (size - 1), fy * (size - 1))]))
    lx, ly = cent[largest]
    below = {i: c for i, c in cent.items() if i != largest and c[1] > ly + 0.5 * abs(c[0] - lx)}
    right = {i: c for i, c in cent.items() if i != largest and c[0] > lx + 0.5 * abs(c[1] - ly)}
    for words, cands in (("just below", below), ("just right of", right)):
        if cands:
            out.append(("L2", f"the field {words} the largest field", [_nearest(cands, lx, ly)]))
    left = [i for i, m in fields.items() if m[:, 0].any()]
    if left:
        out.append(("L2", "the fields touching the left edge of the image", left))
    named = {query: ids for _, query, ids in out}
    return out + [("L3", intent, named[query]) for intent, query in INTENTS.items() if query in named]


def _windows(labels_path: Path, size: int, per_scene: int) -> list[tuple[int, int]]:
    with rasterio.open(labels_path) as src:
        labels = src.read(1)
    cells = [(r, c) for r in range(0, labels.shape[0] - size + 1, size) for c in range(0, labels.shape[1] - size + 1, size)]
    cells.sort(key=lambda rc: -int((labels[rc[0]:rc[0] + size, rc[1]:rc[1] + size] > 0).sum()))
    return cells[:per_scene]


def _write(path: Path, data: np.ndarray, profile: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data if data.ndim == 3 else data[None])


def make_bench(scenes: str | Path, out: str | Path, window: int = 256, per_scene: int = 1,
               min_pixels: int = 200) -> list[dict]:
    """Write the benchmark of every labelled scene under ``scenes`` into ``out``; returns its items."""
    scenes, out = Path(scenes), Path(out)
    items = []
    for labels_path in sorted(scenes.glob("*.labels.tif")):
        scene_id = labels_path.name[: -len(".labels.tif")]
        image_path = labels_path.with_name(scene_id + ".tif")
        if not image_path.is_file():
            continue
        for row, col in _windows(labels_path, window, per_scene):
            win = Window(col, row, window, window)
            with rasterio.open(image_path) as src, rasterio.open(labels_path) as lab:
                rgb, labels = src.read([1, 2, 3], window=win), lab.read(1, window=win)
                profile = dict(driver="GTiff", width=window, height=window, crs=src.crs,
                               transform=src.window_transform(win), compress="deflate")
            wid = f"{scene_id}_{row}_{col}"
            _write(out / "images" / f"{wid}.tif", rgb, {**profile, "count": 3, "dtype": rgb.dtype})
            for k, (level, query, ids) in enumerate(template_targets(window_fields(labels, min_pixels), window)):
                mask = np.isin(labels, ids).astype(np.uint8)
                ys, xs = np.nonzero(mask)
                item = {"id": f"{wid}_{k}", "image": f"images/{wid}.tif", "mask": f"masks/{wid}_{k}.tif",
                        "query": query, "level": level,
                        "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]}
                _write(out / item["mask"], mask, {**profile, "count": 1, "dtype": "uint8"})
                items.append(item)
    (out / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return items
