"""Post-processing of a scene's field instances in ground units: the controls Fields of The World's
CLI gives its users (``--min_size``, ``--max_size``, ``--close_interiors``, ``--simplify``).

:func:`apply_rules` works on the instance raster (0 = no field), before polygons are made, in this order:

0. **edge split** (``edge_quantile`` with ``edge_sigma_m``, ``edge_depth_m``, ``edge_core_m2``): pieces
   cut where the scene image shows a line across them (:mod:`~magseg_ray.fields.edges`; needs the image);
1. **minimum size** (``min_m2``): a piece smaller than this is merged into the neighbouring piece it
   shares the most edge with (4-neighbour pixel pairs; ties to the lower id), smallest piece first, a
   merged piece's size and edges counting from then on; a small piece that touches no other piece
   is dropped (FTW drops every small piece: a cut-off part of a field comes back this way instead);
2. **holes** (``hole_m2``): a 4-connected patch of no-field pixels smaller than this whose only
   neighbour is one field, and which touches neither the raster's edge nor unmapped pixels, is
   filled with that field;
3. **maximum size** (``max_m2``): a piece larger than this is dropped.

Simplification (``simplify_m``) is applied to the polygons
(:func:`~magseg_ray.fields.polygons.simplify_fields`). A value of 0 turns a rule off. Sizes are
converted with the pixel's ground size (:func:`pixel_metres`), so the same settings mean the same
fields at any GSD.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from magseg_ray.errors import ConfigError
from magseg_ray.fields.edges import split_at_edges


@dataclass(frozen=True)
class FieldRules:
    """Post-processing of a map's fields (a model card's ``field_*`` settings, or map_region's flags)."""

    min_m2: float = 0.0
    """Pieces smaller than this (m²) merge into the neighbour they share most edge with (no neighbour:
    dropped); 0: off. FTW's default minimum is 500 m²."""
    max_m2: float = 0.0
    """Pieces larger than this (m²) are dropped; 0: no maximum."""
    hole_m2: float = 0.0
    """Holes of a field (no-field pixels it alone encloses) smaller than this (m²) are filled; 0: off,
    ``inf``: every hole (FTW's ``--close_interiors``)."""
    simplify_m: float = 0.0
    """Douglas-Peucker tolerance of the polygons in metres; 0: map_region's ``simplify_px`` pixels."""
    edge_quantile: float = 0.0
    """Edge split: image pixels whose edge strength is above this quantile (0-1) of the scene's field
    pixels' are edges, and a piece with two cores between them is split (:mod:`.edges`); 0: off."""
    edge_sigma_m: float = 2.0
    """Edge split: scale (m) of the Gaussian gradient that measures edge strength."""
    edge_depth_m: float = 12.0
    """Edge split: a core lies deeper than this (m) from every edge and from the piece's outline."""
    edge_core_m2: float = 1000.0
    """Edge split: the smallest core (m²); a piece under twice this is never split."""

    def __post_init__(self):
        for name in ("min_m2", "max_m2", "hole_m2", "simplify_m", "edge_quantile", "edge_sigma_m",
                     "edge_depth_m", "edge_core_m2"):
            value = getattr(self, name)
            if not value >= 0:  # NaN too
                raise ConfigError(f"field rule {name} {value}: must be >= 0 (0: off; a job's flag takes -1 "
                                  "for the model card's)")
        if self.edge_quantile >= 1:
            raise ConfigError(f"field rule edge_quantile {self.edge_quantile}: must be below 1 (a quantile; 0: off)")
        if self.edge_quantile and not self.edge_sigma_m > 0:
            raise ConfigError(f"field rule edge_sigma_m {self.edge_sigma_m}: the edge split needs a scale above 0")
        if self.max_m2 and self.max_m2 < self.min_m2:
            raise ConfigError(f"field rules: max_m2 {self.max_m2} is below min_m2 {self.min_m2}")


def resolve_rules(card, min_m2: float = -1.0, max_m2: float = -1.0, hole_m2: float = -1.0,
                  simplify_m: float = -1.0, edge_quantile: float = -1.0) -> FieldRules:
    """A model card's rules (``card``: a :class:`~magseg_ray.model.card.ModelPrompt`, its ``field_*``
    settings), each overridden by a job's flag where that is not -1; the edge split's scale, depth and
    core size always the card's. The one home of "card -> rules": ``map_region`` (its flags) and the
    tile server (the card's alone) both take theirs here."""
    pick = {"min_m2": (min_m2, card.field_min_m2), "max_m2": (max_m2, card.field_max_m2),
            "hole_m2": (hole_m2, card.field_hole_m2), "simplify_m": (simplify_m, card.field_simplify_m),
            "edge_quantile": (edge_quantile, card.field_edge_quantile)}
    return FieldRules(**{k: float(default if value == -1 else value) for k, (value, default) in pick.items()},
                      edge_sigma_m=card.field_edge_sigma_m, edge_depth_m=card.field_edge_depth_m,
                      edge_core_m2=card.field_edge_core_m2)


def pixel_metres(transform: Affine, crs, shape: tuple[int, int]) -> float:
    """Ground size of a pixel's side in metres: the transform's in a projected CRS (its linear unit),
    at the raster's centre latitude in a geographic one."""
    crs = CRS.from_user_input(crs)
    size = math.sqrt(abs(transform.a * transform.e))
    if crs.is_geographic:
        _, lat = transform @ (shape[1] / 2, shape[0] / 2)
        return size * 111_320.0 * math.cos(math.radians(lat))
    return size * crs.linear_units_factor[1]


def apply_rules(instances: np.ndarray, rules: FieldRules, pixel_m: float,
                mapped: np.ndarray | None = None, image: np.ndarray | None = None) -> np.ndarray:
    """The instance raster after rules 0-3 of the module docstring (a new int32 array; ids kept, a
    merged piece taking its neighbour's). ``mapped``: pixels with data (holes must lie inside it);
    ``image``: the scene's ``H x W x bands`` pixels on the raster's grid (or that grid grown by one
    margin on every side, :func:`~magseg_ray.fields.edges.split_at_edges`), which the edge split needs
    (:class:`ConfigError` without it)."""
    px = pixel_m * pixel_m
    out = np.asarray(instances, np.int32)
    if rules.edge_quantile:
        if image is None:
            raise ConfigError("field rule edge_quantile needs the scene image (0 turns the edge split off)")
        out = split_at_edges(out, image, rules.edge_quantile, rules.edge_sigma_m / pixel_m,
                             rules.edge_depth_m / pixel_m, rules.edge_core_m2 / px)
    if rules.min_m2:
        out = merge_small(out, rules.min_m2 / px)
    if rules.hole_m2:
        out = close_holes(out, rules.hole_m2 / px, mapped)
    if rules.max_m2:
        areas = np.bincount(out.ravel())
        large = areas > rules.max_m2 / px
        large[0] = False
        out = np.where(large[out], 0, out).astype(np.int32)
    return out


def _edge_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(a, b)``, ``a < b``, of different labels that touch (4-neighbours), with the number
    of pixel edges they share."""
    a, b = [], []
    for x, y in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):  # only the pixels on an edge
        differ = x != y
        a.append(x[differ])
        b.append(y[differ])
    a, b = np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    base = int(hi.max()) + 1 if len(hi) else 1
    keys, counts = np.unique(lo * base + hi, return_counts=True)
    return keys // base, keys % base, counts


def merge_small(instances: np.ndarray, min_px: float) -> np.ndarray:
    """Rule 1: pieces under ``min_px`` pixels merged into the neighbour of longest shared edge, smallest first."""
    area = np.bincount(instances.ravel()).astype(np.float64)
    if not (area[1:][area[1:] > 0] < min_px).any():
        return instances
    lo, hi, counts = _edge_pairs(instances)
    edges: dict[int, dict[int, int]] = {}
    for x, y, c in zip(lo.tolist(), hi.tolist(), counts.tolist()):
        if x:  # 0 (no field) is no neighbour
            edges.setdefault(x, {})[y] = c
            edges.setdefault(y, {})[x] = c
    into = np.arange(len(area))
    heap = [(a, i) for i, a in enumerate(area.tolist()) if i and 0 < a < min_px]
    heapq.heapify(heap)
    while heap:
        a, i = heapq.heappop(heap)
        if a != area[i] or into[i] != i:
            continue  # stale: grown or merged since it was pushed
        near = edges.pop(i, {})
        if not near:
            into[i] = 0
            continue
        j = min(near, key=lambda k: (-near[k], k))
        into[i], area[j] = j, area[j] + area[i]
        for k, c in near.items():
            edges[k].pop(i)
            if k != j:
                edges[j][k] = edges[j].get(k, 0) + c
                edges[k][j] = edges[k].get(j, 0) + c
        if area[j] < min_px:
            heapq.heappush(heap, (area[j], j))
    for i in np.flatnonzero(into != np.arange(len(into))):  # follow each chain to the piece it ends in
        j = i
        while into[j] != j and into[j] != 0:
            j = into[j]
        into[i] = into[j] if into[j] == 0 else j
    return into[instances].astype(np.int32)


def close_holes(instances: np.ndarray, max_px: float, mapped: np.ndarray | None = None) -> np.ndarray:
    """Rule 2: no-field patches under ``max_px`` pixels that only one field touches, filled with it."""
    gaps, n = ndimage.label(instances == 0)
    if not n:
        return instances
    open_ = np.zeros(n + 1, bool)  # touches the raster's edge or unmapped pixels
    open_[np.concatenate([gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]])] = True
    if mapped is not None:
        open_[gaps[~mapped]] = True
    open_[0] = True
    size = np.bincount(gaps.ravel(), minlength=n + 1)
    # pairs (gap, field): gap ids are offset past the fields so that each pair has one of each
    offset = int(instances.max()) + 1
    lo, hi, _ = _edge_pairs(np.where(gaps > 0, gaps + offset, instances))
    touch = (lo < offset) & (hi >= offset) & (lo > 0)
    field, gap = lo[touch], hi[touch] - offset
    neighbours = np.bincount(gap, minlength=n + 1)
    owner = np.zeros(n + 1, np.int64)
    owner[gap] = field
    fill = (neighbours == 1) & ~open_ & (size < max_px)
    out = instances.copy()
    where = fill[gaps]
    out[where] = owner[gaps[where]]
    return out
