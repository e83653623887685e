"""Synthetic smallholder scenes: seeded VHR images with field, tree, pond, well and cloud truth.

A scene imitates dry-season smallholder farmland in Cambodia at 0.5 m:

- Layout: a rotated square over the scene is cut recursively into convex blocks; some blocks stay
  village or scrub land, the rest are cut further into fields until each is below a size drawn
  mostly from the small end of ``field_area_m2``. Each cut runs across the piece's long axis
  (sometimes along it) at a jittered angle and position; the first long cuts become roads. A
  smooth displacement field then makes every edge wavy. Fields tile their blocks: neighbours touch.
- Objects: tree clumps and lone (sugar palm) trees, rectangular or round ponds with soil rims,
  wells, houses, and optional semi-transparent clouds with their shadows.
- Rendering: per-field crop colours with row patterns, bunds on the edges of some fields only,
  scrub elsewhere, then blur and sensor noise.

Truth: ``instances`` holds the visible part of each field (roads, ponds, houses, trees and wells
cut it out); its 4-connected pieces of at least the smallest field area become fields 1..n,
smaller pieces (also those clipped by the scene edge) are dropped and drawn as scrub.
``classes`` holds the ``alu`` classes in drawing order (field, pond, tree, well, cloud), with cloud
wherever the cloud opacity exceeds :data:`CLOUD_OPACITY`; instances stay as they are under clouds.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize, shapes
from scipy import ndimage
from shapely.affinity import rotate, scale
from shapely.geometry import LineString, Point, Polygon, box

from magseg_ray.errors import ConfigError
from magseg_ray.files import replace_atomically
from magseg_ray.masks.schemas import KIND_TAG, get_schema

_ALU = get_schema("alu")
FIELD, TREE, CLOUD, POND, WELL = (_ALU.index_of(c) for c in "ftcpw")
CLOUD_OPACITY = 0.5
"""Cloud opacity above which a pixel is class ``cloud``."""
SUN_SHIFT = (-1.5, -1.0)
"""Shadow offset (rows, columns) in metres of houses and trees: the morning sun is in the south-east."""

_CROPS = np.array(  # RGB of dry-season crop covers; _CROP_WEIGHTS: how common each is on average
    [
        [176, 158, 118],  # harvested paddy, straw stubble
        [140, 124, 100],  # ploughed soil
        [190, 172, 140],  # dry pale soil
        [92, 128, 58],  # dry-season rice
        [122, 150, 74],  # vegetables, young crop
        [188, 170, 92],  # ripe rice
        [70, 82, 80],  # flooded paddy
        [86, 104, 70],  # young rice in water
    ],
    np.float32,
)
_CROP_WEIGHTS = np.array([0.22, 0.14, 0.1, 0.18, 0.1, 0.1, 0.08, 0.08])
_BUNDS = np.array([[172, 160, 122], [84, 98, 58]], np.float32)  # dry grass, green
_WATER = np.array([[48, 62, 72], [82, 80, 62], [52, 74, 58]], np.float32)  # blue, muddy, algae
_ROOFS = np.array([[205, 205, 200], [168, 84, 62], [140, 112, 92], [222, 216, 206]], np.float32)
_ROADS = np.array([[190, 152, 114], [196, 190, 178]], np.float32)  # laterite, concrete
_SCRUB = np.array([[150, 140, 100], [88, 104, 62]], np.float32)  # dry grass, shrubs


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of one synthetic scene; object densities are per hectare of scene."""

    seed: int = 0
    """Seed of the only random generator used: equal configs give bit-identical scenes."""
    size_px: int = 1024
    """Width and height of the square scene in pixels."""
    gsd: float = 0.5
    """Ground sampling distance: pixel size in CRS units (metres)."""
    crs: str = "EPSG:32648"
    """Projected CRS of the scene (default UTM zone 48N, which covers Cambodia)."""
    origin: tuple[float, float] = (500_000.0, 1_400_000.0)
    """(x, y) of the scene's top-left corner in CRS units (default: central Cambodia, 105 E 12.7 N)."""
    field_area_m2: tuple[float, float] = (60.0, 20_000.0)
    """Smallest and largest field area in m²; smaller pieces are dropped (see the module docstring)."""
    small_field_bias: float = 1.5
    """Skew of field sizes to the small end: a piece is cut while its area exceeds
    ``lo * (hi / lo) ** (u ** bias)``, u uniform in [0, 1], hi = 0.9 x largest and lo = 4 x smallest
    field area (at most hi); 1 = log-uniform."""
    block_area_m2: tuple[float, float] = (15_000.0, 50_000.0)
    """Range of the areas below which the layout stops cutting blocks (cropland or village/scrub)."""
    field_fraction: float = 0.8
    """Share of the scene given to cropland blocks (before roads, trees and ponds cut into them)."""
    bund_probability: float = 0.6
    """Share of fields whose edges carry a visible bund, a 0.5-1 m line of grass or soil."""
    roads: int = 2
    """Number of roads, 2.5-6 m wide, on the first layout cuts longer than a quarter of the scene."""
    tree_clumps_per_ha: float = 0.4
    """Clumps of 5-40 trees, in village/scrub land (anywhere if there is none)."""
    scattered_trees_per_ha: float = 1.5
    """Lone trees (sugar palms) anywhere, fields included."""
    ponds_per_ha: float = 0.25
    """Ponds of 5-25 m a side, rectangular or round, anywhere off roads."""
    wells_per_ha: float = 0.3
    """Wells: disks 1-2.5 m across, anywhere off roads."""
    houses_per_ha: float = 0.8
    """Houses of 5-14 m a side, in village/scrub land only (none where there is none)."""
    cloud_probability: float = 0.3
    """Chance that the scene has clouds."""
    noise_sigma: float = 2.0
    """Standard deviation of the per-pixel sensor noise in digital numbers."""
    datetime: str = "2024-01-15T03:30:00Z"
    """Acquisition time, ISO 8601 (written to the image's tags)."""

    def __post_init__(self) -> None:
        (lo, hi), (block_lo, block_hi) = self.field_area_m2, self.block_area_m2
        scene_m2 = (self.size_px * self.gsd) ** 2
        rates = ("tree_clumps_per_ha", "scattered_trees_per_ha", "ponds_per_ha", "wells_per_ha")
        rates += ("houses_per_ha", "noise_sigma", "roads")
        shares = ("field_fraction", "bund_probability", "cloud_probability")
        values = dataclasses.asdict(self)
        problems = [f"{k}={values[k]} must be >= 0" for k in rates if values[k] < 0]
        problems += [f"{k}={values[k]} must lie in [0, 1]" for k in shares if not 0 <= values[k] <= 1]
        problems += [
            problem
            for ok, problem in (
                (self.size_px >= 32, f"size_px={self.size_px} must be at least 32"),
                (self.gsd > 0, f"gsd={self.gsd} must be positive"),
                (self.small_field_bias > 0, f"small_field_bias={self.small_field_bias} must be positive"),
                (0 < lo < hi, f"field_area_m2={self.field_area_m2} must be (min, max), 0 < min < max"),
                (0 < block_lo <= block_hi, f"block_area_m2={self.block_area_m2} must be (min, max), min > 0"),
                (lo <= 0 or scene_m2 < 65_535 * lo, "over 65535 fields (uint16 ids) could fit the scene"),
            )
            if not ok
        ]
        try:
            if not CRS.from_user_input(self.crs).is_projected:
                problems.append(f"crs {self.crs!r} is not projected (gsd is in metres)")
        except CRSError as e:
            problems.append(f"crs {self.crs!r}: {e}")
        try:
            datetime.fromisoformat(self.datetime)
        except ValueError as e:
            problems.append(f"datetime: {e}")
        if problems:
            raise ConfigError(f"synthetic scene: {'; '.join(problems)}")


@dataclass(frozen=True, eq=False)
class Scene:
    """A synthetic scene and its truth, on one georeferenced pixel grid."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB image."""
    instances: np.ndarray
    """(H, W) uint16 field instances: 0 = no field, 1..n = fields."""
    classes: np.ndarray
    """(H, W) uint8 class mask in schema ``alu``."""
    transform: Affine
    """Pixel-to-CRS affine transform."""
    crs: CRS
    """CRS of the grid."""
    datetime: str
    """Acquisition time, ISO 8601."""


def _noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """Smooth n x n noise, features about ``scale`` px across, zero mean and unit deviation: white
    noise on a grid ``scale`` px apart spread by a cubic B-spline (two small matrix products)."""
    step = max(scale, 1)
    k = int(n / step) + 5
    t = np.abs(np.arange(n) / step + 1.5 - np.arange(k)[:, None])  # (k, n) distances to the nodes
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0)).astype(np.float32)
    z = w.T @ rng.standard_normal((k, k)).astype(np.float32) @ w
    return (z - z.mean()) / z.std()


def _burn(geoms: list, n: int) -> np.ndarray:
    """Rasterize geometries in pixel coordinates with values 1..len(geoms) (0 elsewhere)."""
    if not geoms:
        return np.zeros((n, n), np.int32)
    return rasterize(zip(geoms, range(1, len(geoms) + 1)), out_shape=(n, n), dtype=np.int32)


def _axes(poly: Polygon) -> tuple[np.ndarray, float, float]:
    """Unit vector along a polygon's long axis (of its oriented envelope), long and short extent."""
    c = np.asarray(shapely.oriented_envelope(poly).exterior.coords)
    e = np.diff(c[:3], axis=0)
    lens = np.hypot(e[:, 0], e[:, 1])
    i = int(np.argmax(lens))
    return e[i] / lens[i], float(lens[i]), float(lens[1 - i])


def _cut(poly: Polygon, rng: np.random.Generator) -> tuple[list[Polygon], LineString]:
    """Cut a convex polygon in two across its long axis (along it, 30% of the time).

    The cut passes within 15% of the extent of the centroid, which for a convex polygon (whose
    centroid lies at least a third of the width from either side) splits it.
    """
    axis, long, short = _axes(poly)
    if rng.random() < 0.3:
        axis, long = np.array([-axis[1], axis[0]]), short
    a = np.arctan2(axis[1], axis[0]) + rng.normal(0, 0.1)
    nrm = np.array([np.cos(a), np.sin(a)])
    tan = np.array([-nrm[1], nrm[0]]) * 1e6
    p = np.asarray(poly.centroid.coords[0]) + nrm * rng.uniform(-0.15, 0.15) * long
    half = Polygon([p + tan, p - tan, p - tan - 1e6 * nrm, p + tan - 1e6 * nrm])
    parts = shapely.get_parts([poly.intersection(half), poly.difference(half)])
    pieces = [g for g in parts if isinstance(g, Polygon) and g.area > 0]
    return pieces, LineString([p - tan, p + tan]).intersection(poly)


def _layout(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[list[Polygon], list[Polygon]]:
    """Field polygons and road buffers in pixel coordinates (x = column, y = row)."""
    n, px = cfg.size_px, cfg.gsd**2
    scene = box(0, 0, n, n)
    queue, blocks, cuts = deque([rotate(scale(scene, 1.5, 1.5), rng.uniform(0, 90))]), [], []
    while queue:  # breadth first: the first cuts are the longest
        poly = queue.popleft()
        if not poly.intersects(scene):
            continue
        if poly.area <= rng.uniform(*cfg.block_area_m2) / px:
            blocks.append(poly.intersection(scene))
        else:
            pieces, line = _cut(poly, rng)
            queue.extend(pieces)
            cuts.append(line.intersection(scene))
    long_cuts = [c for c in cuts if c.length > n / 4][: cfg.roads]
    roads = [c.buffer(rng.uniform(2.5, 6) / cfg.gsd / 2, cap_style="flat") for c in long_cuts]
    blocks = [b for b in blocks if isinstance(b, Polygon) and b.area > 0]
    spare, stack = (1 - cfg.field_fraction) * n * n, []
    for i in rng.permutation(len(blocks)):  # blocks that fit in the spare area stay village/scrub
        if blocks[i].area <= spare:
            spare -= blocks[i].area
        else:
            stack.append(blocks[i])
    hi = 0.9 * cfg.field_area_m2[1] / px
    lo = min(4 * cfg.field_area_m2[0] / px, hi)
    fields = []
    while stack:
        poly = stack.pop()
        if poly.area <= lo * (hi / lo) ** (rng.random() ** cfg.small_field_bias):
            fields.append(poly)
        else:
            stack.extend(_cut(poly, rng)[0])
    return fields, roads


def _place(rng: np.random.Generator, cfg: SyntheticConfig, per_ha: float, mask: np.ndarray) -> np.ndarray:
    """(k, 2) x, y pixel centres of a Poisson number of objects, uniform over the pixels of ``mask``."""
    k, idx = rng.poisson(per_ha * (cfg.size_px * cfg.gsd) ** 2 / 1e4), np.flatnonzero(mask)
    rows, cols = np.divmod(rng.choice(idx, k) if idx.size else idx, mask.shape[1])
    return np.stack([cols, rows], axis=1) + 0.5


def _trees(rng: np.random.Generator, cfg: SyntheticConfig, open_land: np.ndarray) -> tuple[np.ndarray, ...]:
    """Tree crowns: crown id per pixel (0 = none), a 0..1 dome shading, and (crowns + 1, 3) colours.

    Clumps of 5-40 crowns centre on ``open_land`` (anywhere if there is none); lone trees fall
    anywhere. Each pixel belongs to the crown of its nearest tree if within that tree's radius.
    """
    n, m = cfg.size_px, 1 / cfg.gsd
    centres = _place(rng, cfg, cfg.tree_clumps_per_ha, open_land if open_land.any() else ~open_land)
    clumps = [c + rng.normal(0, rng.uniform(3, 10) * m, (rng.integers(5, 40), 2)) for c in centres]
    lone = _place(rng, cfg, cfg.scattered_trees_per_ha, np.ones((n, n), bool))
    xy = np.floor(np.concatenate([*clumps, lone])).astype(np.intp)
    radius = np.concatenate([rng.uniform(2, 4.5, len(xy) - len(lone)), rng.uniform(3, 4, len(lone))]) * m
    inside = ((xy >= 0) & (xy < n)).all(axis=1)
    xy, radius = xy[inside], radius[inside]
    colours = _CROPS[3] * rng.uniform(0.42, 0.7, (len(xy) + 1, 1))
    crown, dome = np.zeros((n, n), np.int32), np.zeros((n, n), np.float32)
    if len(xy):
        seeds = np.zeros((n, n), np.int32)
        seeds[xy[:, 1], xy[:, 0]] = np.arange(1, len(xy) + 1)
        dist, (r, c) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[r, c]
        reach = radius[nearest - 1]
        crown = np.where(dist < reach, nearest, 0)
        dome = np.clip(1 - (dist / reach) ** 2, 0, 1).astype(np.float32)
    return crown, dome, colours


class _Ground(NamedTuple):
    """Rasters of what :func:`_paint` draws, all n x n; ids count from 1 (0 = none)."""

    fid: np.ndarray  # layout field id (index into the field polygons + 1) of visible field pixels
    road: np.ndarray  # road pixels
    pond: np.ndarray  # pond id
    rim: np.ndarray  # soil rims around ponds
    house: np.ndarray  # house id
    crown: np.ndarray  # tree crown id
    dome: np.ndarray  # 0..1 crown shading, brightest at the centre
    crown_rgb: np.ndarray  # (crowns + 1, 3) crown colours
    well: np.ndarray  # well pixels (a concrete ring)
    well_water: np.ndarray  # water inside the wells


def _objects(rng: np.random.Generator, cfg: SyntheticConfig, fid: np.ndarray, road: np.ndarray) -> _Ground:
    """Place ponds, houses, trees and wells; cut them out of the field ids ``fid``."""
    n, m = cfg.size_px, 1 / cfg.gsd
    ponds = []
    for x, y in _place(rng, cfg, cfg.ponds_per_ha, ~road):
        w, h = rng.uniform(5, 25, 2) * m / 2
        shape = box(x - w, y - h, x + w, y + h) if rng.random() < 0.7 else scale(Point(x, y).buffer(1), w, h)
        ponds.append(rotate(shape, rng.uniform(0, 180)))
    pond = _burn(ponds, n)
    rim = ndimage.binary_dilation(pond > 0, iterations=max(1, round(1.5 * m))) & (pond == 0)
    houses = []
    for x, y in _place(rng, cfg, cfg.houses_per_ha, (fid == 0) & ~road & ~rim & (pond == 0)):
        w, h = rng.uniform(5, 14) * m / 2, rng.uniform(5, 9) * m / 2
        houses.append(rotate(box(x - w, y - h, x + w, y + h), rng.uniform(0, 180)))
    house = _burn(houses, n)
    crown, dome, crown_rgb = _trees(rng, cfg, (fid == 0) & ~road & (house == 0))
    centres = _place(rng, cfg, cfg.wells_per_ha, ~road)
    wells = [Point(x, y).buffer(rng.uniform(1, 2.5) * m / 2) for x, y in centres]
    well, water = _burn(wells, n) > 0, _burn([w.buffer(-0.35 * m) for w in wells], n) > 0
    fid = np.where(road | (pond > 0) | rim | (house > 0) | (crown > 0) | well, 0, fid)
    return _Ground(fid, road, pond, rim, house, crown, dome, crown_rgb, well, water)


def _fields_only(fid: np.ndarray, min_px: float) -> np.ndarray:
    """uint16 instances: each 4-connected piece of each id in ``fid`` of ``min_px`` pixels or more."""
    out, count = np.zeros(fid.shape, np.uint16), 0
    for k, sl in enumerate(ndimage.find_objects(fid), start=1):
        if sl is None:
            continue
        pieces, m = ndimage.label(fid[sl] == k)
        for j in np.flatnonzero(np.bincount(pieces.ravel(), minlength=m + 1)[1:] >= min_px) + 1:
            count += 1
            out[sl][pieces == j] = count
    return out


def _edges(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels with a different label within ``width`` pixels (Chebyshev)."""
    return ndimage.maximum_filter(labels, 2 * width + 1) != ndimage.minimum_filter(labels, 2 * width + 1)


def _paint(rng: np.random.Generator, cfg: SyntheticConfig, fields: list[Polygon], g: _Ground) -> np.ndarray:
    """Float RGB image of the ground: scrub, fields with rows and bunds, then the objects on top."""
    n, m, k, f = cfg.size_px, 1 / cfg.gsd, len(fields) + 1, g.fid
    crops = rng.choice(len(_CROPS), k, p=rng.dirichlet(4 * _CROP_WEIGHTS))  # a few crops dominate
    rgb = _CROPS[crops] * rng.normal(1, 0.05, (k, 1)) * rng.normal(1, 0.03, (k, 3))  # brightness, tint
    axis = np.array([[1.0, 0.0]] + [_axes(p)[0] for p in fields])
    angle = np.arctan2(axis[:, 1], axis[:, 0]) + rng.choice([0, np.pi / 2], k) + rng.normal(0, 0.05, k)
    angle = np.where(rng.random(k) < 0.25, rng.uniform(0, np.pi, k), angle)  # rows mostly follow the field
    freq = 2 * np.pi / (rng.uniform(1.5, 4.5, k) * m)  # rows 1.5-4.5 m apart
    amp = np.where(rng.random(k) < 0.4, 0, rng.uniform(0.015, 0.07, k))
    phase, patchy = rng.uniform(0, 2 * np.pi, k), rng.uniform(0.02, 0.12, k)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    low = _noise(rng, n, 15 * m) + 0.5 * _noise(rng, n, 4 * m)
    grain = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 0.7)
    grain /= grain.std()
    across = xx * np.cos(angle)[f] + yy * np.sin(angle)[f]  # distance across the rows
    rows = amp[f] * (1 + 0.5 * low) * np.sin(freq[f] * across + phase[f])
    img = rgb[f] * (1 + rows + patchy[f] * low + 0.06 * grain)[..., None]
    mix = (1 / (1 + np.exp(-2 * _noise(rng, n, 12 * m))))[..., None]
    scrub = (_SCRUB[0] + (_SCRUB[1] - _SCRUB[0]) * mix) * (1 + 0.1 * grain)[..., None]
    img = np.where((f == 0)[..., None], scrub, img).astype(np.float32)

    bund, wide = rng.random(k) < cfg.bund_probability, rng.random(k) < 0.5
    bund_rgb = _BUNDS[rng.integers(0, 2, k)] * rng.normal(1, 0.05, (k, 1))
    on = (f > 0) & bund[f] & np.where(wide[f], _edges(f, 2), _edges(f, 1))
    img[on] = 0.3 * img[on] + 0.7 * bund_rgb[f[on]]
    img[g.road] = _ROADS[rng.integers(0, len(_ROADS))] * (1 + 0.05 * grain[g.road])[:, None]
    img[g.road & _edges(g.road.view(np.uint8), 1)] *= 0.85
    img[g.rim] = _CROPS[2] * (1 + 0.08 * grain[g.rim])[:, None]
    on, count = g.pond > 0, g.pond.max() + 1
    water = _WATER[rng.integers(0, len(_WATER), count)] * rng.normal(1, 0.05, (count, 1))
    img[on] = water[g.pond[on]] * (1 + 0.03 * low[on])[:, None]
    sun = [round(v * m) for v in SUN_SHIFT]
    on = g.house > 0
    img[(ndimage.shift(on.view(np.uint8), sun, order=0) > 0) & ~on] *= 0.55
    img[on] = _ROOFS[rng.integers(0, len(_ROOFS), g.house.max() + 1)][g.house[on]]
    on = g.crown > 0
    img[(ndimage.shift(on.view(np.uint8), sun, order=0) > 0) & ~on] *= 0.55
    img[on] = g.crown_rgb[g.crown[on]] * (0.55 + 0.6 * g.dome[on] + 0.12 * grain[on])[:, None]
    img[g.well], img[g.well_water] = (205, 203, 195), (40, 46, 50)
    saturation = rng.uniform(0.6, 0.85)  # scene-wide haze and tint
    img = img.mean(axis=-1, keepdims=True) * (1 - saturation) + img * saturation
    return img * rng.normal(1, 0.03, 3).astype(np.float32)


def _clouds(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Cloud opacity per pixel, 0..0.95: fractal noise above a random level (all 0 without clouds)."""
    n, m = cfg.size_px, 1 / cfg.gsd
    if rng.random() >= cfg.cloud_probability:
        return np.zeros((n, n), np.float32)
    fractal = sum(_noise(rng, n, s * m) / k for k, s in enumerate((120, 60, 30, 15), start=1))
    return np.clip((fractal / fractal.std() - rng.uniform(0.5, 1.5)) * 0.8, 0, 0.95).astype(np.float32)


def make_scene(config: SyntheticConfig) -> Scene:
    """Generate one scene (see the module docstring); the same config gives the same arrays."""
    cfg, rng = config, np.random.default_rng(config.seed)
    n, m = cfg.size_px, 1 / cfg.gsd
    fields, roads = _layout(cfg, rng)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)  # wavy edges: read the layout through a smooth warp
    dy, dx = (m * (rng.uniform(1, 3) * _noise(rng, n, 40 * m) + 0.5 * _noise(rng, n, 8 * m)) for _ in "yx")
    rows, cols = (np.clip(np.rint(v), 0, n - 1).astype(np.intp) for v in (yy + dy, xx + dx))
    ground = _objects(rng, cfg, _burn(fields, n)[rows, cols], _burn(roads, n)[rows, cols] > 0)
    instances = _fields_only(ground.fid, cfg.field_area_m2[0] * m * m)
    ground = ground._replace(fid=np.where(instances > 0, ground.fid, 0))
    alpha = _clouds(rng, cfg)
    classes = np.where(instances > 0, FIELD, 0).astype(np.uint8)
    for mask, value in ((ground.pond > 0, POND), (ground.crown > 0, TREE), (ground.well, WELL)):
        classes[mask] = value
    classes[alpha > CLOUD_OPACITY] = CLOUD
    shadow = ndimage.shift(alpha, (-40 * m, -25 * m), order=0)[..., None]
    image = _paint(rng, cfg, fields, ground) * (1 - 0.45 * shadow)
    image = image * (1 - alpha[..., None]) + 240 * alpha[..., None]
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0)) + rng.normal(0, cfg.noise_sigma, image.shape)
    return Scene(
        image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
        instances=instances,
        classes=classes,
        transform=Affine(cfg.gsd, 0, cfg.origin[0], 0, -cfg.gsd, cfg.origin[1]),
        crs=CRS.from_user_input(cfg.crs),
        datetime=cfg.datetime,
    )


def scene_paths(out_dir: str | Path, scene_id: str) -> dict[str, Path]:
    """A scene's files: ``image`` <id>.tif, ``labels`` <id>.labels.tif, ``classes``, ``fields``."""
    names = {"image": ".tif", "labels": ".labels.tif", "classes": ".classes.tif", "fields": ".fields.gpkg"}
    return {key: Path(out_dir) / f"{scene_id}{suffix}" for key, suffix in names.items()}


def _write_cog(path: Path, bands: np.ndarray, scene: Scene, tags: dict[str, str], **options) -> None:
    """Write (count, H, W) bands as a Cloud-Optimized GeoTIFF (256 px tiles, overviews) with tags."""

    def write(tmp: Path) -> None:
        count, height, width = bands.shape
        grid = dict(count=count, height=height, width=width, crs=scene.crs, transform=scene.transform)
        with rasterio.open(tmp, "w", "COG", dtype=bands.dtype, blocksize=256, **grid, **options) as dst:
            dst.write(bands)
            dst.update_tags(**tags)

    replace_atomically(path, write)


def field_polygons(scene: Scene) -> gpd.GeoDataFrame:
    """The scene's field instances as polygons (column ``field_id``, ascending) in its CRS."""
    inst = scene.instances
    found = shapes(inst, mask=inst > 0, transform=scene.transform)  # one polygon per 4-connected field
    geoms, ids = zip(*((shapely.geometry.shape(g), int(v)) for g, v in found)) if inst.any() else ((), ())
    frame = gpd.GeoDataFrame({"field_id": np.array(ids, np.int64)}, geometry=list(geoms), crs=scene.crs)
    return frame.sort_values("field_id", ignore_index=True)


def write_scene(scene: Scene, out_dir: str | Path, scene_id: str) -> dict[str, Path]:
    """Write a scene's four files (see :func:`scene_paths`), each atomically; return their paths.

    The image is a JPEG COG tagged with the acquisition time (``TIFFTAG_DATETIME`` in UTC,
    ``ACQUISITION_DATETIME`` as given); the instance and class rasters are DEFLATE COGs tagged
    ``MAGSEG_KIND``; the GeoPackage holds the field polygons (layer ``fields``).
    """
    paths = scene_paths(out_dir, scene_id)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    when = datetime.fromisoformat(scene.datetime)
    when = when.astimezone(timezone.utc) if when.tzinfo else when
    stamp = {"TIFFTAG_DATETIME": when.strftime("%Y:%m:%d %H:%M:%S"), "ACQUISITION_DATETIME": scene.datetime}
    rgb = scene.image.transpose(2, 0, 1)
    _write_cog(paths["image"], rgb, scene, stamp, compress="JPEG", quality=90, overview_resampling="average")
    for key, data, tags in (
        ("labels", scene.instances, {KIND_TAG: "instance"}),
        ("classes", scene.classes, {KIND_TAG: "class", "MAGSEG_SCHEMA": _ALU.name}),
    ):
        _write_cog(paths[key], data[None], scene, tags, compress="DEFLATE", overview_resampling="nearest")
    frame = field_polygons(scene)
    replace_atomically(paths["fields"], lambda tmp: frame.to_file(tmp, driver="GPKG", layer="fields"))
    return paths


def write_scenes(out_dir: str | Path, count: int, config: SyntheticConfig) -> Iterator[tuple[str, bool]]:
    """Write scenes ``synth_<seed>`` for seeds ``config.seed`` .. ``config.seed + count - 1``.

    Scenes whose four files all exist are skipped, so an interrupted run resumes. Yields each
    scene id and whether it was written (False: skipped) as it goes.
    """
    if count < 0:
        raise ConfigError(f"scene count must be >= 0, got {count}")
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {out_dir}: {e}") from None
    for i in range(count):
        cfg = dataclasses.replace(config, seed=config.seed + i)
        scene_id = f"synth_{cfg.seed}"
        todo = not all(p.exists() for p in scene_paths(out_dir, scene_id).values())
        if todo:
            write_scene(make_scene(cfg), out_dir, scene_id)
        yield scene_id, todo
