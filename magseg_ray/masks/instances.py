"""Field instances from a class mask, the inverse of :func:`.schemas.classes_from_instances`."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from magseg_ray.masks.schemas import MAX_BOUNDARY_WIDTH, Schema, get_schema

BOUNDARY_REACH = math.ceil(MAX_BOUNDARY_WIDTH * math.sqrt(2))
"""How far (pixels, Euclidean) a boundary pixel may lie from the interior it is given to (9):
boundaries up to ``MAX_BOUNDARY_WIDTH`` px deep, measured at a corner."""


def instances_from_classes(
    mask: np.ndarray, schema: str | Schema = "fields3", reach: float = BOUNDARY_REACH
) -> np.ndarray:
    """Field instance raster (int32; 0 = no field, 1..n = fields) from a class mask.

    Fields are the 4-connected components of the field *interior*: pixels of
    ``schema.field_classes`` other than ``schema.boundary_class``. Each boundary pixel then joins
    the interior component nearest to it (Euclidean distance; ties go to whichever the distance
    transform finds) if that lies within ``reach`` pixels; the remaining boundary pixels form
    components of their own. For schemas without a boundary class, fields are simply the
    4-connected components of the field classes.
    """
    schema = get_schema(schema)
    mask = schema.check_mask(mask)
    field = np.isin(mask, schema.field_classes)
    if schema.boundary_class is None:
        return ndimage.label(field)[0].astype(np.int32)
    boundary = mask == schema.boundary_class
    labels, n = ndimage.label(field & ~boundary)
    if n:  # the feature transform alone; distances only where they are asked (boundary pixels)
        rows, cols = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
        at = np.nonzero(boundary)
        src_r, src_c = rows[at], cols[at]
        dr, dc = (src_r - at[0]).astype(np.float64), (src_c - at[1]).astype(np.float64)
        near = np.sqrt(dr * dr + dc * dc) <= reach
        labels[at[0][near], at[1][near]] = labels[src_r[near], src_c[near]]
    rest = boundary & (labels == 0)
    lone, _ = ndimage.label(rest)
    labels[rest] = lone[rest] + n
    return labels.astype(np.int32)
