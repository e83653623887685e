"""Label schemas: which classes a mask holds, and the one-letter code each class has in R-RLE text.

A class mask is a 2-D ``uint8`` array of class indices into ``schema.classes``; index 0 is always
background. Codes are single lowercase ASCII letters so that each one is a single token for the
project tokenizer and for Gemma3's.

Schemas:

- ``fields3``: background ``b``, field interior ``f``, field boundary ``e`` (edge). The boundary
  is derived from an instance raster (see :func:`classes_from_instances`): it keeps touching
  fields apart, so fields can be recovered as instances from a class mask.
- ``alu`` (ALU India): background ``b``, field ``f``, tree ``t``, cloud ``c``, pond ``p``, well ``w``.
- ``ai4sf`` (AI4SmallFarms, Vietnam and Cambodia): background ``b``, field ``f``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from magseg_ray.errors import SchemaError

NO_DATA = 255
"""Class value of pixels with no class: outside the scene, the AOI or any answered patch in a map,
unlabelled in a training chip. Never a schema's class index."""

KIND_TAG = "MAGSEG_KIND"
"""GeoTIFF tag that names a label raster's kind: ``class`` (a class mask) or ``instance`` (field ids)."""


@dataclass(frozen=True)
class LabelClass:
    """One class of a schema."""

    name: str
    """Human name, used in prompts and metric reports (``"field"``)."""
    code: str
    """Single lowercase letter written in R-RLE text (``"f"``)."""
    color: tuple[int, int, int]
    """RGB colour for previews and map tiles."""


@dataclass(frozen=True)
class Schema:
    """A named, ordered set of classes; a mask value is an index into ``classes``."""

    name: str
    """Schema name as given on command lines (``"fields3"``)."""
    classes: tuple[LabelClass, ...]
    """Classes in index order; index 0 is background."""
    field_classes: tuple[int, ...]
    """Indices whose pixels belong to a field instance (interior and boundary for ``fields3``)."""
    boundary_class: int | None = None
    """Index of the boundary class that separates touching fields, if the schema has one."""

    def __post_init__(self) -> None:
        codes = [c.code for c in self.classes]
        if len(set(codes)) != len(codes) or not all(len(c) == 1 and "a" <= c <= "z" for c in codes):
            raise SchemaError(f"schema {self.name!r}: codes must be distinct lowercase letters, got {codes}")

    @property
    def codes(self) -> str:
        """All class codes in index order, as one string (``"bfe"``)."""
        return "".join(c.code for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def index_of(self, code: str) -> int:
        """Class index of a code; raises :class:`SchemaError` for a code not in the schema."""
        i = self.codes.find(code)
        if i < 0 or len(code) != 1:
            raise SchemaError(f"schema {self.name!r} has no class code {code!r} (codes: {self.codes})")
        return i

    def check_mask(self, mask: np.ndarray, what: str = "mask") -> np.ndarray:
        """Return ``mask`` as a 2-D uint8 array, or raise if it holds values outside the schema."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise SchemaError(f"{what}: expected a 2-D class mask, got shape {mask.shape}")
        if mask.size and (mask.min() < 0 or mask.max() >= len(self.classes)):
            raise SchemaError(
                f"{what}: values {int(mask.min())}..{int(mask.max())} do not fit schema "
                f"{self.name!r} with {len(self.classes)} classes"
            )
        return mask.astype(np.uint8, copy=False)


_BG = LabelClass("background", "b", (0, 0, 0))
_FIELD = LabelClass("field", "f", (255, 196, 0))

SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("fields3", (_BG, _FIELD, LabelClass("boundary", "e", (220, 30, 30))), (1, 2), 2),
        Schema(
            "alu",
            (
                _BG,
                _FIELD,
                LabelClass("tree", "t", (20, 140, 40)),
                LabelClass("cloud", "c", (230, 230, 230)),
                LabelClass("pond", "p", (30, 90, 220)),
                LabelClass("well", "w", (150, 60, 200)),
            ),
            (1,),
        ),
        Schema("ai4sf", (_BG, _FIELD), (1,)),
    )
}


def get_schema(name: str | Schema) -> Schema:
    """Look a schema up by name (a :class:`Schema` passes through)."""
    if isinstance(name, Schema):
        return name
    try:
        return SCHEMAS[name]
    except KeyError:
        raise SchemaError(f"unknown label schema {name!r}; known: {', '.join(SCHEMAS)}") from None


BOUNDARY_WIDTH = 1
"""Default boundary half-width in pixels for ``fields3`` (see :func:`classes_from_instances`)."""
MAX_BOUNDARY_WIDTH = 6
"""Widest boundary a model may be trained with: the fields step gives boundary pixels back to
their field only this deep (see :data:`magseg_ray.masks.instances.BOUNDARY_REACH`)."""


def classes_from_instances(
    instances: np.ndarray, schema: str | Schema = "fields3", boundary_width: int = BOUNDARY_WIDTH
) -> np.ndarray:
    """Class mask from a field instance raster (0 = no field, k > 0 = field k).

    For ``fields3`` a field pixel is *boundary* when another field (a different non-zero id) lies
    within ``boundary_width`` pixels of it (Chebyshev distance, i.e. a (2w+1)^2 window). Both sides
    of a shared edge are marked, so the line between two touching fields is ``2 * boundary_width``
    pixels wide; edges against background are not marked (nothing needs separating there). For
    other schemas every field pixel is class ``field``.
    """
    schema = get_schema(schema)
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise SchemaError(f"instance raster must be 2-D, got shape {inst.shape}")
    inst = inst.astype(np.int64, copy=False)
    out = np.where(inst > 0, 1, 0).astype(np.uint8)
    if schema.boundary_class is None or boundary_width <= 0:
        return out
    size = 2 * boundary_width + 1
    big = int(inst.max()) + 1  # stands for background in the minimum (int64 max overflows in scipy)
    hi = ndimage.maximum_filter(inst, size=size, mode="nearest")
    lo = ndimage.minimum_filter(np.where(inst > 0, inst, big), size=size, mode="nearest")
    boundary = (inst > 0) & ((hi > inst) | (lo < inst))
    out[boundary] = schema.boundary_class
    return out
