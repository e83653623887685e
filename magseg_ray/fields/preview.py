"""A picture of a run: the mapped fields outlined over the imagery, one panel per scene.

Panels show the scenes with the most mapped fields (at most ``max_panels``), each cropped to the
AOI's extent in that scene and read at a reduced resolution from the COG's overviews, with field
outlines drawn in the scene's own CRS.
"""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.windows import from_bounds

from magseg_ray.chips.read import open_scene


def write_preview(path, scenes: gpd.GeoDataFrame, owned: dict, fields: gpd.GeoDataFrame, store=None,
                  max_panels: int = 6, panel_px: int = 600, title: str = "") -> None:
    """Write the preview PNG to the local ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {s: 0 for s in owned if not owned[s].is_empty}
    for s in fields["scene_id"]:
        for part in str(s).split("+"):
            if part in counts:
                counts[part] += 1
    shown = sorted(counts, key=lambda s: (-counts[s], s))[:max_panels]
    cols = min(3, max(len(shown), 1))
    rows = max(math.ceil(len(shown) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    by_id = scenes.set_index("id")
    for ax, scene_id in zip(axes.flat, shown):
        scene = by_id.loc[scene_id]
        area = gpd.GeoSeries([owned[scene_id]], crs="EPSG:4326").to_crs(scene["crs"])
        with open_scene(scene["uri"], store) as src:
            left, bottom, right, top = area.total_bounds
            window = from_bounds(left, bottom, right, top, src.transform).round_offsets().round_lengths()
            scale = max(window.width, window.height) / panel_px
            shape = (max(int(window.height / max(scale, 1)), 1), max(int(window.width / max(scale, 1)), 1))
            bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
            image = src.read(bands, window=window, out_shape=(3, *shape), boundless=True, fill_value=0)
            bounds = rasterio.windows.bounds(window, src.transform)
        image = np.moveaxis(image, 0, -1).astype(np.float32)
        lo, hi = np.percentile(image[image > 0], (2, 98)) if (image > 0).any() else (0, 1)
        image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
        ax.imshow(image, extent=(bounds[0], bounds[2], bounds[1], bounds[3]))
        mine = fields[[scene_id in str(s).split("+") for s in fields["scene_id"]]]
        if len(mine):
            outlines = mine.to_crs(scene["crs"]).boundary
            outlines.plot(ax=ax, color="yellow", linewidth=0.6)
        area.boundary.plot(ax=ax, color="cyan", linewidth=1.0, linestyle="--")
        ax.set_xlim(bounds[0], bounds[2])
        ax.set_ylim(bounds[1], bounds[3])
        ax.set_title(f"{scene_id}: {counts[scene_id]} fields", fontsize=9)
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no scene mapped", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
