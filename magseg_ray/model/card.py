"""The model card: the prompt settings a model was trained with, kept beside its weights.

A model answers well only for the prompt layout it was trained on, so every model folder this
project writes holds ``magseg.json``: the fields of :class:`ModelPrompt`. Jobs read it to build the
same prompts (:func:`read_model_prompt`), and training refuses a base built for other prompts
(:func:`check_model_prompt`). A checkpoint without the file (a hub Gemma3 folder) has no card; a
card written before a field existed reads that field's default, which is what such a model used.

Mapping with a model (the mapping plan, :func:`magseg_ray.map_region.plan`, and the tile server)
reads the card once, through :func:`mapping_settings`: its schema, chip grid and fields core depth
resolved against the caller's flags, and the weights' fingerprint. Its ``field_*`` rules become the
fields step's :class:`~magseg_ray.fields.rules.FieldRules` in one place for both,
:func:`~magseg_ray.fields.rules.resolve_rules`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any
from pathlib import Path

from magseg_ray.errors import ConfigError
from magseg_ray.prompt import PromptConfig

MODEL_CARD = "magseg.json"
"""File in a model folder that records the prompt settings the model was trained with."""

LAYOUT_FIELDS = ("schema", "patch_size", "local_crop", "crop_scale")
"""Settings that fix the prompt's layout: a base built for other values is refused for training.
The rest (boundary width, instruction, answer format) are what a further training run may change."""


@dataclass(frozen=True)
class ModelPrompt:
    """Prompt settings a model was trained with (``magseg.json`` in its folder)."""

    schema: str = "fields3"
    """Label schema of the answers."""
    patch_size: int = 32
    """Patch side in pixels."""
    chip_size: int = 512
    """Chip side in pixels the model saw as global context."""
    local_crop: bool = True
    """Whether prompts show the local crop."""
    crop_scale: float = 2.0
    """Side of the local crop as a multiple of the patch side."""
    boundary_width: int = PromptConfig.boundary_width
    """Half-width in pixels of the boundary class in the answers the model was trained on."""
    instruction: str = PromptConfig.instruction
    """Instruction style of the prompts (see :attr:`~magseg_ray.prompt.PromptConfig.instruction`)."""
    answer_format: str = PromptConfig.answer_format
    """Mask text the model writes (``rrle`` or ``anchored``; a card without it means ``rrle``)."""
    radiometry: str = "full-range"
    """How the training imagery's band values became the 0-255 the model saw
    (:data:`~magseg_ray.chips.radiometry.RADIOMETRIES`; a card without it: ``full-range``, what 8-bit
    training scenes are). Every job that reads scenes for the model brings them to it."""
    boundary_bias: float = 1.0
    """Decoding, not prompting: greedy answers multiply the probability of starting a boundary run
    by this (chosen on training scenes; see ``GenerationSettings.boundary_bias``). Every job that
    maps with the model uses it."""
    field_seed_px: float = 0.0
    """Fields, not prompting: the model's fields grow from interior cores deeper than this many
    pixels, so a boundary the model drew with gaps still separates two fields (``seed_px`` of
    :func:`~magseg_ray.masks.instances.instances_from_classes`); 0 (a card without it): each interior
    component is a field. Every job that turns the model's class map into fields uses it."""
    field_min_m2: float = 0.0
    """Fields, not prompting: pieces smaller than this (m²) merge into the neighbour they share most
    edge with (``FieldRules.min_m2``, :mod:`magseg_ray.fields.rules`); 0 (a card without it): off."""
    field_max_m2: float = 0.0
    """Fields: pieces larger than this (m²) are dropped (``FieldRules.max_m2``); 0: no maximum."""
    field_hole_m2: float = 0.0
    """Fields: holes a field alone encloses, smaller than this (m²), are filled (``FieldRules.hole_m2``); 0: off."""
    field_simplify_m: float = 0.0
    """Fields: polygon simplification tolerance in metres (``FieldRules.simplify_m``); 0: the mapping
    job's ``simplify_px``."""
    field_edge_quantile: float = 0.0
    """Fields: pieces are split where the scene image shows an edge across them, edges being pixels
    above this quantile of edge strength (``FieldRules.edge_quantile``, :mod:`magseg_ray.fields.edges`);
    0 (a card without it): off."""
    field_edge_sigma_m: float = 2.0
    """Fields: the edge split's gradient scale in metres (``FieldRules.edge_sigma_m``)."""
    field_edge_depth_m: float = 12.0
    """Fields: the edge split's core depth in metres (``FieldRules.edge_depth_m``)."""
    field_edge_core_m2: float = 1000.0
    """Fields: the edge split's smallest core in m² (``FieldRules.edge_core_m2``)."""

    def prompt(self) -> PromptConfig:
        return PromptConfig(schema=self.schema, patch_size=self.patch_size, local_crop=self.local_crop,
                            crop_scale=self.crop_scale, boundary_width=self.boundary_width,
                            instruction=self.instruction, answer_format=self.answer_format)


def read_model_prompt(model_dir: str | Path) -> ModelPrompt | None:
    """The model folder's prompt settings, or None for a checkpoint without ``magseg.json``."""
    path = Path(model_dir) / MODEL_CARD
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        return ModelPrompt(**{k: values[k] for k in ModelPrompt.__dataclass_fields__ if k in values})
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{path}: not a valid model prompt card: {e}") from None


def check_model_prompt(model_dir: str | Path, prompt: PromptConfig) -> None:
    """Raise :class:`ConfigError` if the model folder's ``magseg.json`` records another prompt layout
    (:data:`LAYOUT_FIELDS`) than ``prompt``'s: training on prompts a model was not built for wastes
    the run silently."""
    card = read_model_prompt(model_dir)
    if card is None:
        return
    ours = {k: getattr(prompt, k) for k in LAYOUT_FIELDS}
    theirs = {k: getattr(card, k) for k in ours}
    differ = [f"{k} {ours[k]!r} (model: {theirs[k]!r})" for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ConfigError(f"{Path(model_dir) / MODEL_CARD}: the model was built for other prompts: "
                          f"{', '.join(differ)}; pass the model's values")


def write_model_prompt(model_dir: str | Path, settings: ModelPrompt) -> None:
    from magseg_ray.files import write_atomic

    write_atomic(Path(model_dir) / MODEL_CARD, json.dumps(asdict(settings), indent=1))


@dataclass(frozen=True)
class MappingSettings:
    """What mapping with a model takes from its card, resolved against the caller's flags."""

    card: ModelPrompt
    """The model card (defaults for a checkpoint without one)."""
    schema: Any
    """The card's label schema (:class:`~magseg_ray.masks.schemas.Schema`); it has a field class."""
    chip: Any
    """Chip grid (:class:`~magseg_ray.chips.windows.ChipConfig`): the given chip size, else the card's."""
    seed_px: float
    """Core depth of the fields step: the given ``seed_px``, -1 for the card's ``field_seed_px``."""
    fingerprint: str
    """The weights' fingerprint (:func:`~magseg_ray.model.checkpoint.model_fingerprint`)."""


def mapping_settings(model_dir: str | Path, chip_size: int = 0, overlap: int = -1,
                     seed_px: float = -1.0) -> MappingSettings:
    """The model folder's card read once and resolved for mapping: ``chip_size`` 0 takes the card's,
    ``overlap`` -1 an eighth of the chip, ``seed_px`` -1 the card's. Raises :class:`ConfigError` for
    a schema without a field class, a chip size that is no multiple of the patch, a bad
    ``seed_px`` or ``overlap``."""
    # imported here: this module is read by every job's config (its --help), which stays light
    from magseg_ray.chips.windows import ChipConfig
    from magseg_ray.masks.instances import resolve_seed_px
    from magseg_ray.masks.schemas import get_schema
    from magseg_ray.model.checkpoint import model_fingerprint

    card = read_model_prompt(model_dir) or ModelPrompt()
    seed = resolve_seed_px(seed_px, card.field_seed_px)
    schema = get_schema(card.schema)
    if not schema.field_classes:
        raise ConfigError(f"model {str(model_dir)!r} answers in schema {schema.name!r}, which has no field class")
    size = chip_size or card.chip_size
    chip = ChipConfig.for_chip_size(size, overlap)
    if size % card.patch_size:
        raise ConfigError(f"chip_size {size} is not a multiple of the model's patch size {card.patch_size}")
    return MappingSettings(card, schema, chip, seed, model_fingerprint(model_dir))
