"""Settings of the tile server, and the one place that sizes it (replicas, autoscaling, limits).

Every field is a flag of ``jobs/serve.py`` and an ``args`` key of the Serve application builder
``magseg_ray.serve:app`` (``serve run magseg_ray.serve:app catalog=... model=...``, or
``serveConfigV2.applications[].args`` of a KubeRay RayService), so the three ways to start the
server cannot drift apart. :meth:`ServeSettings.deployment_options` turns them into the Serve
deployment options:

- **replicas**: ``min_replicas == max_replicas`` gives that many fixed replicas; ``max_replicas >
  min_replicas`` turns on Serve autoscaling between them, aiming at ``target_ongoing_requests`` per
  replica. Each replica loads the model once and holds its own chip cache, and reserves
  ``cpus_per_replica`` CPUs and ``gpus_per_replica`` GPUs (1 on GPU clusters: the model then runs
  on that GPU in bf16).
- **limits**: a replica takes at most ``max_ongoing_requests`` requests at once; each caller (the
  HTTP proxy) queues at most ``max_queued_requests`` more, and answers any request beyond that at
  once with HTTP 503 (``Retry-After: 1``) instead of letting it wait. The defaults (64 and 128)
  let a map view's burst of cached tiles through: at 8 and 16, 266 of 300 requests for cached tiles
  at 32 concurrent got 503 (``benchmarks/serve.py``, its ``view`` phase).
- **GeoSeg** (``POST /segment``, :mod:`magseg_ray.serve.segment`): on by default with route B the
  server's own MAgSeg model (``geoseg_text_route=field-model``: offline, no extra checkpoint, the
  requested area is the box); a grounder folder makes a grounder find the box in the area, CLIP
  and a point segmenter add route A (fused with route B unless it is ``none``), ``geoseg_tiny``
  builds offline random-weight presets of every part not given. ``geoseg_max_px`` bounds the
  pixels one request covers (413 past it); an area larger than ``geoseg_chip_size`` streams chip by chip. Each replica builds its pipeline once, at start.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

from magseg_ray.config import doc, dtype_field
from magseg_ray.errors import ConfigError
from magseg_ray.map_region import MapSettings

API_KEY_ENV = "MAGSEG_API_KEY"
"""Environment variable read for the API key when ``api_key`` is empty (keeps it off command lines)."""
GEOSEG_TEXT_ROUTES = ("field-model", "sam3", "none")
"""GeoSeg route B on the server: the server's MAgSeg model, SAM3 with the phrase, or none (route A only)."""


@dataclass(frozen=True)
class ServeSettings(MapSettings):
    """Settings of one tile server application (and of every map, :class:`~magseg_ray.map_region.MapSettings`)."""

    maps: str = field(default="", metadata=doc(
        "comma-separated map_region output folders (or s3:// prefixes) made with this model: tiles they "
        "cover are served from their masks/ and fields/ instead of running the model"))
    api_key: str = field(default="", metadata=doc(
        f"when set (or ${API_KEY_ENV}), every route but /healthz needs header X-API-Key (or ?key=) equal to it"))
    patch_batch: int = field(default=64, metadata=doc("patches decoded together (they share the chip's KV prefix)"))
    chip_batch: int = field(default=8, metadata=doc("most chips one batched model call takes (@serve.batch)"))
    batch_wait_s: float = field(default=0.02, metadata=doc("how long a model call waits for more chips to batch"))
    cache_mb: int = field(default=256, metadata=doc("chip cache size per replica, MiB (least recently used chips leave first)"))
    min_zoom: int = field(default=12, metadata=doc("coarsest zoom served; coarser tiles get 400"))
    max_chips_per_tile: int = field(default=64, metadata=doc(
        "most model chips one tile may need in one scene; a tile needing more is too coarse for per-patch inference (400)"))
    min_replicas: int = field(default=1, metadata=doc("replicas (each loads the model); autoscaling lower bound"))
    max_replicas: int = field(default=1, metadata=doc("autoscaling upper bound; equal to --min-replicas: no autoscaling"))
    target_ongoing_requests: float = field(default=4.0, metadata=doc("autoscaling target of ongoing requests per replica"))
    cpus_per_replica: float = field(default=1.0, metadata=doc("CPUs reserved per replica (and its torch threads)"))
    gpus_per_replica: float = field(default=0.0, metadata=doc("GPUs per replica (1 on GPU clusters)"))
    dtype: str = dtype_field()
    max_ongoing_requests: int = field(default=64, metadata=doc(
        "requests a replica works on at once: a cached tile is answered at once, a cold one waits in the replica "
        "for the model's next batch, so this is sized for a browser map view's burst of tiles, not the model"))
    max_queued_requests: int = field(default=128, metadata=doc("requests queued beyond those; more get 503 at once"))
    geoseg: bool = field(default=True, metadata=doc(
        "answer POST /segment (GeoSeg: segment what a query asks for in an area); --no-geoseg: /segment answers 503"))
    geoseg_text_route: str = field(default="field-model", metadata=doc(
        "GeoSeg route B: field-model (this server's own model: offline, no extra checkpoint), sam3 "
        "(--geoseg-sam3 prompted with the phrase), none (route A only)", choices=list(GEOSEG_TEXT_ROUTES)))
    geoseg_grounder: str = field(default="", metadata=doc(
        "GeoSeg grounder checkpoint folder (Qwen2.5-VL, Qwen3-VL, Gemma3, PaliGemma): it finds the box in the "
        "requested area; without one the whole area is the box"))
    geoseg_clip: str = field(default="", metadata=doc("CLIP checkpoint folder of GeoSeg's route A (with --geoseg-points)"))
    geoseg_points: str = field(default="", metadata=doc(
        "SAM or SAM3 tracker checkpoint folder of GeoSeg's route A (with --geoseg-clip)"))
    geoseg_sam3: str = field(default="", metadata=doc("SAM3 checkpoint folder (with --geoseg-text-route sam3)"))
    geoseg_tiny: str = field(default="", metadata=doc(
        "build GeoSeg's offline tiny presets (random weights) into this folder and use each part of them not "
        "given (grounder, CLIP, point segmenter, SAM3): plumbing and latency only, their answers are random"))
    geoseg_max_px: int = field(default=1024 * 1024, metadata=doc(
        "most scene pixels one /segment area may cover (its window on the scene grid; 1024 x 1024 is "
        "about 0.26 km2 at 0.5 m, up to 9 chips of 512); a larger area is refused (413)"))
    geoseg_chip_size: int = field(default=512, metadata=doc(
        "GeoSeg's chip side in pixels: a /segment area larger than one chip streams through the scene grid's "
        "chips (chip/8 overlap), each grounded and segmented on its own, as jobs/geoseg.py --aoi does"))

    def __post_init__(self) -> None:
        if not 0 <= self.min_zoom <= 24:
            raise ConfigError(f"min_zoom must be within 0-24, got {self.min_zoom}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        for name in ("chip_batch", "patch_batch", "max_ongoing_requests", "max_queued_requests", "max_chips_per_tile",
                     "geoseg_max_px", "geoseg_chip_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        from magseg_ray.masks.instances import resolve_seed_px

        resolve_seed_px(self.seed_px, 0.0)  # refused here, before any replica starts
        if self.cache_mb < 0:
            raise ConfigError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.geoseg_text_route not in GEOSEG_TEXT_ROUTES:
            raise ConfigError(f"geoseg_text_route must be one of {', '.join(GEOSEG_TEXT_ROUTES)}, got {self.geoseg_text_route!r}")
        if not self.geoseg or self.geoseg_tiny:
            return
        if bool(self.geoseg_clip) != bool(self.geoseg_points):
            raise ConfigError("GeoSeg's route A needs both --geoseg-clip and --geoseg-points (or --geoseg-tiny)")
        if self.geoseg_text_route == "none" and not self.geoseg_clip:
            raise ConfigError("--geoseg-text-route none leaves route A alone, which needs --geoseg-clip and "
                              "--geoseg-points (or --geoseg-tiny); or start with --no-geoseg")
        if self.geoseg_text_route == "sam3" and not self.geoseg_sam3:
            raise ConfigError("--geoseg-text-route sam3 needs --geoseg-sam3 (a SAM3 checkpoint folder)")

    @classmethod
    def from_args(cls, args: dict) -> ServeSettings:
        """From the application builder's ``args`` (strings from ``serve run k=v``, or typed values
        from a config file); unknown keys are refused, naming them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ConfigError(f"unknown tile server settings {unknown}; known: {sorted(known)}")
        values = {}
        for name, value in args.items():
            tp = hints[name]
            try:
                if tp is bool and isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes", "on")
                values[name] = tp(value)
            except (TypeError, ValueError):
                raise ConfigError(f"tile server setting {name}={value!r} is not a {tp.__name__}") from None
        return cls(**values)

    def key(self) -> str:
        """The API key in force ('' for none)."""
        return self.api_key or os.environ.get(API_KEY_ENV, "")

    def map_roots(self) -> list[str]:
        return [m.strip() for m in self.maps.split(",") if m.strip()]

    def geoseg_models(self):
        """``(ModelsConfig, GeoSegConfig)`` of ``/segment``'s pipeline: route A when CLIP and a point
        segmenter are given (or the tiny presets), route B unless ``geoseg_text_route`` is none, fused
        when both; the field-model route is this server's model."""
        from magseg_ray.geoseg.config import GeoSegConfig
        from magseg_ray.geoseg.run import ModelsConfig

        points = bool(self.geoseg_tiny or self.geoseg_clip)
        text = self.geoseg_text_route != "none"
        routes = "both" if points and text else ("points" if points else "text")
        models = ModelsConfig(
            grounder=self.geoseg_grounder or None, clip=self.geoseg_clip or None, points=self.geoseg_points or None,
            sam3=self.geoseg_sam3 or None, text_route=self.geoseg_text_route if text else "sam3",  # unused: points only
            field_model=self.model_dir(), tiny=self.geoseg_tiny or None)
        return models, GeoSegConfig(routes=routes)

    def deployment_options(self) -> dict:
        """Options of the tile server's Serve deployment (see module doc)."""
        from ray.serve.config import BackpressureConfig

        options = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
        }
        if self.max_replicas > self.min_replicas:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        else:
            options["num_replicas"] = self.min_replicas
        return options
