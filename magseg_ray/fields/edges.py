"""Pieces split along the imagery's edges: neighbouring fields whose shared edge the model never drew.

The model's map leaves two fields in one piece where it drew no boundary between them (the cores step
of :mod:`~magseg_ray.masks.instances` parts them only across a *gap* in a drawn line). The scene image
often still shows the line: a change of crop or tone, a track. :func:`split_at_edges` cuts a piece
there, in three steps, on one scene's instance raster and its image on the same grid:

1. **edge strength** (:func:`edge_strength`): per band, the Gaussian gradient magnitude at scale
   ``sigma_px``, divided by the band's standard deviation over the field pixels; the bands combined
   as the root of the sum of squares;
2. **edges**: pixels stronger than the ``quantile`` of the strength over the raster's field pixels
   (so the threshold follows each scene's contrast and texture);
3. **cores**: within each piece of at least ``2 * core_px`` pixels, the pixels off edges that lie
   deeper than ``depth_px`` (Euclidean distance to the nearest edge pixel or pixel outside the piece);
   their 4-connected components of at least ``core_px`` pixels are its cores. A piece with two or
   more cores is split: each of its pixels joins the nearest core (SciPy's feature transform, ties to
   the leftmost column, then the topmost row), so no pixel is lost and no part is smaller than a core.
   The part of the first core (in label order) keeps the piece's id; the others are numbered after
   the raster's largest id.

Texture (crop rows, wet patches) scatters edge pixels, which leaves no deep core: such a piece stays
whole.

The image may reach past the raster by the same margin on every side (a tile's window read with
:func:`reach_px` more pixels of its scene): step 1 then sees the pixels beyond the raster's border, so
the strength inside it is the strength of the larger image there, exactly where the margin is at
least :func:`reach_px`; steps 2-3 use only the raster's own pixels. The settings are the model
card's ``field_edge_*`` in ground units (:class:`~magseg_ray.fields.rules.FieldRules`);
:func:`~magseg_ray.fields.rules.apply_rules` runs this first, before small pieces merge.
"""

from __future__ import annotations

import edt
import numpy as np
from scipy import ndimage

from magseg_ray.errors import ConfigError


TRUNCATE = 4.0
"""Gaussian kernels of step 1 end this many ``sigma_px`` from their centre (SciPy's default)."""


def reach_px(sigma_px: float) -> int:
    """How far (pixels) the strength at a pixel looks: SciPy's kernel radius at :data:`TRUNCATE`."""
    return int(TRUNCATE * sigma_px + 0.5)


def edge_strength(image: np.ndarray, field: np.ndarray, sigma_px: float) -> np.ndarray:
    """Step 1 of the module docstring: float32 edge strength of an ``H x W x bands`` image, each
    band scaled by its standard deviation over the ``field`` pixels (a band without contrast there
    counts for nothing)."""
    out = np.zeros(image.shape[:2], np.float32)
    for b in range(image.shape[2]):
        band = image[..., b].astype(np.float32)
        sd = float(band[field].std()) if field.any() else 0.0
        if sd > 0:
            out += (ndimage.gaussian_gradient_magnitude(band, sigma_px, truncate=TRUNCATE) / sd) ** 2
    return np.sqrt(out)


def split_at_edges(instances: np.ndarray, image: np.ndarray, quantile: float, sigma_px: float,
                   depth_px: float, core_px: float) -> np.ndarray:
    """The instance raster (0 = no field) with its pieces split along the image's edges, as the module
    docstring says (a new int32 array). ``image``: ``H x W x bands`` on the raster's grid, or that grid
    grown by the same margin on every side."""
    grown = [a - b for a, b in zip(image.shape[:2], instances.shape)]
    if image.ndim != 3 or grown[0] != grown[1] or grown[0] % 2 or grown[0] < 0:
        raise ConfigError(f"edge split: image of shape {image.shape} is not H x W x bands on the {instances.shape} "
                          "instance raster's grid, or that grid grown by one margin on every side")
    (h, w), margin = instances.shape, grown[0] // 2
    out = np.asarray(instances, np.int32).copy()
    field = out > 0
    if not field.any():
        return out
    strength = edge_strength(image, np.pad(field, margin), sigma_px)[margin:margin + h, margin:margin + w]
    edge = strength > np.quantile(strength[field], quantile)
    area = np.bincount(out.ravel())
    next_id = int(out.max()) + 1
    for k, box in enumerate(ndimage.find_objects(out), 1):
        if box is None or area[k] < 2 * core_px:
            continue
        own = out[box] == k
        parts = _parts(own & ~edge[box], depth_px, core_px)
        if parts is None:
            continue
        ids = np.where(parts == 1, k, next_id + parts - 2)
        out[box][own] = ids[own]
        next_id += int(parts.max()) - 1
    return out


def _parts(inner: np.ndarray, depth_px: float, core_px: float) -> np.ndarray | None:
    """Over a piece's box: 1..n, the nearest of its ``n >= 2`` cores (components of ``inner`` deeper than
    ``depth_px``, at least ``core_px`` pixels) at every pixel; None when it has fewer than two."""
    cores, n = ndimage.label(edt.edtsq(inner, black_border=False) > depth_px * depth_px)
    if n < 2:
        return None
    big = np.flatnonzero(np.bincount(cores.ravel()) >= core_px)
    big = big[big > 0]
    if len(big) < 2:
        return None
    number = np.zeros(n + 1, np.int32)
    number[big] = np.arange(1, len(big) + 1, dtype=np.int32)
    seeds = number[cores]
    rows, cols = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    return seeds[rows, cols]
