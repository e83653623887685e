"""Field instances from a class mask, the inverse of :func:`.schemas.classes_from_instances`.

Two rules, one function. With ``seed_px = 0`` (truth masks, rewards, the default) each 4-connected
component of the field interior is a field. A model's map needs more: its boundary lines have gaps
(a patch where the decoder missed the edge), and one gap joins two fields into one component. With
``seed_px > 0`` fields grow from *cores*, the interior pixels deeper than ``seed_px`` inside the
interior (Euclidean distance to the nearest non-interior pixel). Two fields deep enough to hold a
core stay apart across a gap in the boundary between them no wider than ``2 * seed_px`` pixels; the
gap goes to the nearer core of the component, and no pixel leaves its own interior component.
Mapping uses half the model's patch size, so a boundary missed in one patch still separates.

Nearest means Euclidean distance, ties going to the candidate in the leftmost column, then the
topmost row: the rule of SciPy's feature transform, which this module once ran over the whole
raster and still runs inside components with several cores. Boundary pixels look only ``reach``
pixels around them, in that order (:func:`_nearest_within`), and core depths come from the
exact ``edt`` transform, so the fields are the same as with SciPy everywhere, only faster.
"""

from __future__ import annotations

import math

import edt
import numpy as np
from scipy import ndimage

from magseg_ray.errors import ConfigError
from magseg_ray.masks.schemas import MAX_BOUNDARY_WIDTH, Schema, get_schema

BOUNDARY_REACH = math.ceil(MAX_BOUNDARY_WIDTH * math.sqrt(2))
"""How far (pixels, Euclidean) a boundary pixel may lie from the interior it is given to (9):
boundaries up to ``MAX_BOUNDARY_WIDTH`` px deep, measured at a corner."""


def instances_from_classes(
    mask: np.ndarray, schema: str | Schema = "fields3", reach: float = BOUNDARY_REACH, seed_px: float = 0.0
) -> np.ndarray:
    """Field instance raster (int32; 0 = no field, 1..n = fields) from a class mask.

    Fields are the 4-connected components of the field *interior*: pixels of
    ``schema.field_classes`` other than ``schema.boundary_class`` (or, with ``seed_px > 0``, the
    cores of the module docstring plus each interior component that holds no core, every other
    interior pixel joining the nearest of them). Each boundary pixel then joins the field nearest
    to it (ties as in the module docstring) if that lies within ``reach`` pixels; the remaining
    boundary pixels form components of their own. For schemas without a boundary class, fields
    are simply the 4-connected components of the field classes.
    """
    schema = get_schema(schema)
    mask = schema.check_mask(mask)
    is_field = np.zeros(256, bool)  # np.isin(mask, field_classes) as one gather (mask is uint8)
    is_field[list(schema.field_classes)] = True
    field = is_field[mask]
    if schema.boundary_class is None:
        return ndimage.label(field)[0].astype(np.int32)
    boundary = mask == schema.boundary_class
    interior = field & ~boundary
    labels, n = ndimage.label(interior)
    if seed_px > 0 and n:
        labels, n = _grown_cores(interior, labels, n, seed_px)
    if n:
        at = np.nonzero(boundary)
        labels[at] = _nearest_within(labels, at, reach)
    rest = boundary & (labels == 0)
    if rest.any():  # boundary far from every field: fields of their own
        lone, _ = ndimage.label(rest)
        labels[rest] = lone[rest] + n
    return labels.astype(np.int32)


def _nearest_within(labels: np.ndarray, at: tuple[np.ndarray, np.ndarray], reach: float) -> np.ndarray:
    """For the pixels ``at`` (rows, cols), the label of the nearest pixel of ``labels`` that is not
    0, within ``reach`` (0 where none is). Tries offsets nearest first, each pixel dropping out at
    its first labelled one, so the work follows how far the pixels lie from a field."""
    k = int(reach)
    oy, ox = (o.ravel() for o in np.mgrid[-k:k + 1, -k:k + 1])
    d2 = oy * oy + ox * ox
    near = d2 <= reach * reach
    order = np.lexsort((oy[near], ox[near], d2[near]))  # nearest first, then leftmost column, then topmost row
    h, w = labels.shape
    out = np.zeros(len(at[0]), labels.dtype)
    todo = np.arange(len(at[0]))
    rows, cols = at[0].astype(np.int64), at[1].astype(np.int64)
    for dy, dx in zip(oy[near][order], ox[near][order]):
        if not len(todo):
            break
        r, c = rows[todo] + dy, cols[todo] + dx
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        found = np.zeros(len(todo), labels.dtype)
        found[inside] = labels[r[inside], c[inside]]
        hit = found > 0
        out[todo[hit]] = found[hit]
        todo = todo[~hit]
    return out


def resolve_seed_px(value: float, default: float) -> float:
    """A ``--seed-px`` setting: a depth >= 0 as given, -1 for ``default`` (a model card's or a run's);
    anything else, NaN included, is a :class:`ConfigError`."""
    if not (value >= 0 or value == -1):
        raise ConfigError(f"seed_px {value}: must be >= 0, or -1 for the model card's (or the run's)")
    return float(default if value == -1 else value)


def _grown_cores(interior: np.ndarray, parts: np.ndarray, m: int, seed_px: float) -> tuple[np.ndarray, int]:
    """The interior split into fields grown from cores: each 4-connected core (interior deeper than
    ``seed_px``) numbered, every other pixel of a component of ``parts`` (``m`` of them) joining the
    nearest core **of its own component** (a component with one core is that core's field whole);
    then each component that holds no core, whole."""
    cores, n = ndimage.label(edt.edtsq(interior, black_border=False) > seed_px * seed_px)
    owner = np.zeros(n + 1, np.int64)  # the component each core lies in
    at = cores > 0
    owner[cores[at]] = parts[at]
    count = np.bincount(owner[1:], minlength=m + 1)  # cores per component (a core's component is never 0)
    # what each component becomes, in one gather: its core's field (one core), 0 (several: filled
    # below), or a field of its own, numbered after the cores in label order (no core)
    field_of = np.zeros(m + 1, np.int32)
    single = np.flatnonzero(count[owner] == 1)  # cores alone in their component (index 0 is not a core)
    field_of[owner[single]] = single
    coreless = np.flatnonzero(count[1:] == 0) + 1
    field_of[coreless] = n + 1 + np.arange(len(coreless), dtype=np.int32)
    out = field_of[parts]
    boxes = ndimage.find_objects(parts)
    for k in np.flatnonzero(count > 1):  # several cores: a feature transform in the component's box
        box = boxes[k - 1]
        own = parts[box] == k
        mine = np.where(own, cores[box], 0)
        rows, cols = ndimage.distance_transform_edt(mine == 0, return_distances=False, return_indices=True)
        out[box][own] = mine[rows[own], cols[own]]
    return out, n + len(coreless)
