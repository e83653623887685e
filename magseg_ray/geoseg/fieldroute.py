"""The project's field models as GeoSeg routes: useful offline, on our own models.

- :class:`FieldRoute`: the MAgSeg model is itself a text-prompted segmenter for the classes it
  knows. If the phrase names one of its schema's classes (:data:`CLASS_WORDS`), the model
  answers every patch of the refined box, each chip with the global context it was trained on
  (``chip_size`` windows of the scene around the box, zero-padded past its edge), and the route
  keeps the instance of that class with the most pixels in the middle half of the box (a
  grounded box frames one object), or every pixel of the class with ``select="all"``. A phrase
  that names no class the model knows -> no answer (route invalid).
- :class:`MapRoute`: no model at all: the fields of a ``map_region`` run (its GeoPackage or
  GeoParquet, any CRS), rasterised onto the scene's grid; the route keeps the mapped field with
  the most pixels in the middle half of the box.
- Over an AOI (:func:`asks_for_fields`): a query that asks for the fields themselves ("fields",
  "all the farm fields") is answered by a finished ``map_region`` run's fields, whole, without
  decoding anything again (``jobs/geoseg.py --aoi ... --fields-run DIR``).

Both need the scene around the box, not just the crop: the pipeline calls their
``segment_box(image, box, phrase)`` (crop-sized mask or None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from magseg_ray.geoseg.boxes import Box
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import get_schema

CLASS_WORDS = {
    "field": ("field", "fields", "farm", "farmland", "cropland", "crop", "crops", "plot", "parcel", "paddy", "paddies"),
    "tree": ("tree", "trees", "orchard", "grove", "woodland"),
    "pond": ("pond", "ponds", "tank", "reservoir", "water"),
    "well": ("well", "wells"),
    "cloud": ("cloud", "clouds"),
}
"""Words of a phrase that name a schema class (by the class's name)."""


FILLER_WORDS = frozenset(("all", "the", "every", "each", "of", "in", "this", "area", "show", "find", "segment",
                          "map", "me", "and", "agricultural"))
"""Words a query for the fields themselves may hold beside the field class's words."""


def asks_for_fields(query: str) -> bool:
    """Whether ``query`` asks for every field and nothing else: its words are field words
    (:data:`CLASS_WORDS`) and :data:`FILLER_WORDS`, at least one a field word ("the largest field"
    is not: it asks for one of them)."""
    words = set(re.findall(r"[a-z]+", query.lower()))
    named = words & set(CLASS_WORDS["field"])
    return bool(named) and words <= named | FILLER_WORDS


def phrase_classes(phrase: str, schema) -> tuple[int, ...]:
    """Class indices of ``schema`` the phrase names (a field also takes the boundary class)."""
    schema = get_schema(schema)
    words = set(re.findall(r"[a-z]+", phrase.lower()))
    named = [i for i, c in enumerate(schema.classes) if i and words & set(CLASS_WORDS.get(c.name, (c.name,)))]
    if any(schema.classes[i].name == "field" for i in named):
        named += [i for i in schema.field_classes if i not in named]
    return tuple(sorted(named))


def central_instance(instances: np.ndarray, select: str = "central") -> np.ndarray | None:
    """The instance with the most pixels in the middle half of the raster (``select="all"``: all)."""
    if not instances.any():
        return None
    if select == "all":
        return instances > 0
    h, w = instances.shape
    middle = instances[h // 4 : h - h // 4 or h, w // 4 : w - w // 4 or w]
    counts = np.bincount(middle.ravel(), minlength=int(instances.max()) + 1)
    counts[0] = 0
    if not counts.any():
        counts = np.bincount(instances.ravel())
        counts[0] = 0
    return instances == int(counts.argmax())


@dataclass
class FieldRoute:
    """The MAgSeg model (a loaded checkpoint) as a text-prompted route."""

    model: object
    processor: object
    prompt: object
    """:class:`~magseg_ray.prompt.PromptConfig` the model was trained with."""
    chip_size: int = 256
    select: str = "central"
    batch_size: int = 16
    boundary_bias: float = 1.0
    """The model card's decoding bias toward boundary runs."""
    field_seed_px: float = 0.0
    """The model card's core depth of its fields (``instances_from_classes``'s ``seed_px``)."""
    max_new_tokens: int | None = None
    """Answer token budget per patch (None: the longest mask text), as the mapping model's."""
    _last: tuple = field(default=(None, None), repr=False)
    """(key, classes) of the last box answered: ablations that share a box share the model's answer."""

    @classmethod
    def load(cls, path, select: str = "central", placement=None) -> "FieldRoute":
        """The model of ``path`` on ``placement`` (a :class:`~.loading.Placement`; None: CPU, float32)."""
        from magseg_ray.model.card import ModelPrompt, read_model_prompt
        from magseg_ray.model.checkpoint import load_model

        model, processor = (load_model(path, placement.torch_dtype, placement.device) if placement
                            else load_model(path))
        card = read_model_prompt(path) or ModelPrompt()
        return cls(model, processor, card.prompt(), card.chip_size, select, boundary_bias=card.boundary_bias,
                   field_seed_px=card.field_seed_px)

    def _chip_origins(self, box: Box) -> list[tuple[int, int]]:
        """Top-left corners of the chips that cover ``box`` (centred on it when it fits in one)."""
        x1, y1, x2, y2 = box
        c = self.chip_size
        origins = []
        for axis0, axis1 in ((x1, x2), (y1, y2)):
            if axis1 - axis0 <= c:
                origins.append([(axis0 + axis1 - c) // 2])
            else:
                origins.append(list(range(axis0, axis1, c)))
        return [(x, y) for y in origins[1] for x in origins[0]]

    def classes(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The model's class mask of the box (box-sized uint8)."""
        from magseg_ray.model.generate import GenerationSettings, answer_chip

        key = (image.shape, hash(image[::7, ::7].tobytes()), tuple(box))
        if self._last[0] == key:
            return self._last[1]
        x1, y1, x2, y2 = box
        c, p = self.chip_size, self.prompt.patch_size
        out = np.zeros((y2 - y1, x2 - x1), np.uint8)
        settings = GenerationSettings(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                      boundary_bias=self.boundary_bias)
        for ox, oy in self._chip_origins(box):
            chip = np.zeros((c, c, 3), np.uint8)
            sy0, sx0, sy1, sx1 = max(oy, 0), max(ox, 0), min(oy + c, image.shape[0]), min(ox + c, image.shape[1])
            chip[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = image[sy0:sy1, sx0:sx1]
            boxes = [(px, py, px + p, py + p) for py in range(0, c, p) for px in range(0, c, p)
                     if ox + px < x2 and ox + px + p > x1 and oy + py < y2 and oy + py + p > y1]
            for a in answer_chip(self.model, self.processor, chip, boxes, self.prompt, settings):
                px, py = a.box[0] + ox, a.box[1] + oy
                ix0, iy0, ix1, iy1 = max(px, x1), max(py, y1), min(px + p, x2), min(py + p, y2)
                out[iy0 - y1 : iy1 - y1, ix0 - x1 : ix1 - x1] = a.mask[iy0 - py : iy1 - py, ix0 - px : ix1 - px]
        self._last = (key, out)
        return out

    def segment_box(self, image: np.ndarray, box: Box, phrase: str) -> np.ndarray | None:
        schema = get_schema(self.prompt.schema)
        wanted = phrase_classes(phrase, schema)
        if not wanted:
            return None
        classes = self.classes(image, box)
        if set(wanted) >= set(schema.field_classes):
            instances = instances_from_classes(classes, schema, seed_px=self.field_seed_px)
        else:
            instances = ndimage.label(np.isin(classes, wanted))[0]
        return central_instance(instances, self.select)


@dataclass
class MapRoute:
    """Mapped fields (a ``map_region`` run's polygons) rasterised onto one scene's grid."""

    instances: np.ndarray = field(repr=False)
    """Scene-sized int32 raster: 0 no field, k the k-th mapped field."""

    @classmethod
    def from_fields(cls, fields, shape: tuple[int, int], transform, crs) -> "MapRoute":
        from rasterio.features import rasterize

        fields = fields.to_crs(crs)
        shapes = [(g, i + 1) for i, g in enumerate(fields.geometry) if g is not None and not g.is_empty]
        raster = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32") if shapes \
            else np.zeros(shape, np.int32)
        return cls(raster)

    def segment_box(self, image: np.ndarray, box: Box, phrase: str) -> np.ndarray | None:
        x1, y1, x2, y2 = box
        return central_instance(self.instances[y1:y2, x1:x2])
