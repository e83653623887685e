"""What ``jobs/geoseg.py`` does, as a typed config and two functions: build the pipeline, answer a query.

:class:`ModelsConfig` says which parts to load (checkpoint folders, or ``--tiny`` to build the
offline presets, or the field routes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from magseg_ray.config import doc, dtype_field
from magseg_ray.errors import ConfigError
from magseg_ray.geoseg.config import GeoSegConfig

TEXT_ROUTES = ("sam3", "field-model", "field-map")
"""Route B choices: SAM3 with the phrase, the MAgSeg model, or the fields of a map_region run."""


@dataclass(frozen=True)
class ModelsConfig:
    """Which GeoSeg parts to load."""

    grounder: str | None = field(default=None, metadata=doc(
        "grounder checkpoint folder (Qwen2.5-VL, Qwen3-VL, Gemma3, PaliGemma); without it give --box"))
    clip: str | None = field(default=None, metadata=doc("CLIP checkpoint folder (route A's similarity map)"))
    points: str | None = field(default=None, metadata=doc(
        "route A's point-prompt segmenter: a SAM3 tracker folder, or SAM / SAM 2.1 as options (default, "
        "as in the paper: the SAM3 tracker of --sam3 when that is the hub's SAM3 folder, sam3_video; "
        "the tiny presets' SAM3 tracker with --tiny)"))
    sam3: str | None = field(default=None, metadata=doc("SAM3 checkpoint folder (route B with --text-route sam3)"))
    text_route: str = field(default="sam3", metadata=doc(
        "route B: sam3 (phrase as text prompt), field-model (the MAgSeg model of --field-model), "
        "field-map (the fields of --field-map)", choices=list(TEXT_ROUTES)))
    field_model: str | None = field(default=None, metadata=doc(
        "MAgSeg model folder for --text-route field-model (default: the shipped demo model)"))
    field_map: str | None = field(default=None, metadata=doc(
        "field polygons of a map_region run (its fields.gpkg, or any vector file) for --text-route field-map"))
    device: str | None = field(default=None, metadata=doc(
        "torch device of every GeoSeg model: cpu, cuda, cuda:1 (default: cuda when a GPU is visible, else cpu)"))
    dtype: str = dtype_field()
    max_new_tokens: int = field(default=96, metadata=doc(
        "the grounder's answer budget in tokens (raise it for 'thinking' grounders, which reason before the box)"))
    tiny: str | None = field(default=None, metadata=doc(
        "build the offline tiny presets (random weights) into this folder and use every part of them "
        "that is not given: plumbing and latency only, their answers are random"))


def tiny_folders(models: ModelsConfig) -> ModelsConfig:
    """``models`` with every part not given taken from the tiny presets of ``models.tiny`` (built there once)."""
    from dataclasses import replace

    from magseg_ray.geoseg.presets import build_presets

    root = Path(models.tiny)
    names = {"grounder": "grounder", "clip": "clip", "points": "sam3_tracker", "sam3": "sam3"}
    if not all((root / n / "config.json").is_file() for n in names.values()):
        build_presets(root)
    return replace(models, **{k: getattr(models, k) or str(root / n) for k, n in names.items()})


def build_pipeline(models: ModelsConfig, config: GeoSegConfig, scene=None, field_route=None):
    """The pipeline the configs ask for; ``scene`` (a :class:`.outputs.Scene`) is needed by field-map;
    ``field_route``, a :class:`.fieldroute.FieldRoute` already loaded (the tile server shares its
    replica's model), is used for field-model instead of loading ``models.field_model``."""
    from magseg_ray.geoseg.loading import Placement
    from magseg_ray.geoseg.pipeline import ModelFolders, load_geoseg

    placement = Placement.resolve(models.device, models.dtype)
    if models.tiny:
        models = tiny_folders(models)
    text_route = None
    if config.routes != "points" and models.text_route == "field-model":
        from magseg_ray.geoseg.fieldroute import FieldRoute
        from magseg_ray.model.checkpoint import DEMO_MODEL

        text_route = field_route or FieldRoute.load(models.field_model or DEMO_MODEL, placement=placement)
    elif config.routes != "points" and models.text_route == "field-map":
        text_route = map_route(models.field_map, scene)
    folders = ModelFolders(models.grounder, models.clip, models.points or _sam3_tracker(models.sam3), models.sam3)
    return load_geoseg(folders, config, text_route, placement, models.max_new_tokens)


def _sam3_tracker(sam3: str | None) -> str | None:
    """The ``--sam3`` folder when it also holds a SAM3 tracker (the hub's ``sam3_video``), else None."""
    import json

    try:
        kind = json.loads((Path(sam3) / "config.json").read_text()).get("model_type") if sam3 else None
    except (OSError, ValueError):
        return None  # the text route's loading names the problem with the folder
    return sam3 if kind == "sam3_video" else None


def map_route(path: str | None, scene):
    import geopandas as gpd

    from magseg_ray.errors import RasterInputError
    from magseg_ray.geoseg.fieldroute import MapRoute

    if not path:
        raise ConfigError("--text-route field-map needs --field-map (a map_region run's fields.gpkg)")
    try:
        fields_ = gpd.read_file(path)
    except Exception as e:  # pyogrio raises several kinds for unreadable files
        raise RasterInputError(f"cannot read field polygons {path}: {e}") from None
    if fields_.crs is None:
        raise RasterInputError(f"field polygons {path} have no CRS")
    return MapRoute.from_fields(fields_, scene.image.shape[:2], scene.transform, scene.crs)


def parse_box(text: str | None):
    """``"x1,y1,x2,y2"`` (pixels) -> a tuple of floats, or None."""
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--box must be four numbers x1,y1,x2,y2 in pixels, got {text!r}")
    return values

