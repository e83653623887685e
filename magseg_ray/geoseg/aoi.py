"""GeoSeg over an area of interest: one query -> its objects in every scene the AOI touches, as a map.

The mapping job's flow (:mod:`magseg_ray.map_region`: plan, Ray Data, reducer, resume, ``partial``,
``failures.json``, ``summary.json``) with GeoSeg as the model stage:

1. plan (:func:`plan_query`): the query checked (:class:`~magseg_ray.errors.QueryError`), the AOI,
   the catalog, the chips of every scene the AOI touches (``chip_size`` windows sharing
   ``overlap`` px); an output folder made for another AOI, query, model set or setting is refused;
2. Ray Data: chips read by range requests (:func:`~magseg_ray.chips.pipeline.mapping_chips`), then
   a pool of :class:`GeoSegChips` actors, each with the GeoSeg pipeline loaded once. Per chip:
   grounding (the grounder's box in the chip; without a grounder the whole chip is the box),
   refinement, the routes, fusion. Each chip's mask (1 object, 0 background, no data outside the
   scene and AOI) is written at once, with the chip's attributes: ``query``, ``phrase`` (the
   grounder's), ``route`` (the fusion case: both, points, text) and ``score``
   (:attr:`~magseg_ray.geoseg.pipeline.Result.score`), and the ``reason`` of an empty mask;
3. reducer (:func:`~magseg_ray.fields.reduce.reduce_run`): each scene's chips stitched by the
   overlap rule, the mask's 4-connected pieces polygonized and measured, pieces cut at scene seams
   merged, written as GeoParquet (``fields/``) and ``fields.gpkg`` in the fiboa columns (``class``
   ``object``, ``confidence`` the pixel-weighted mean of its chips' scores) plus each object's
   query, phrase, route and score, those of the chip that owns a point inside it.

Each chip is grounded on its own: an object cut by a chip edge may be found in one chip and not
its neighbour, and a chip where the query's object is absent still gets the grounder's best box.

The field route (:func:`answer_from_fields`): with ``fields_run``, a query that asks for the fields
themselves (:func:`~magseg_ray.geoseg.fieldroute.asks_for_fields`) is answered from a finished
``map_region`` run's ``fields/``, nothing decoded again: its fields that meet the AOI, cut to it,
route ``fields-run``, score the field's confidence; ``partial`` when that run was.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from magseg_ray.chips.radiometry import ReadFlags
from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.map_region import DEMO_DIR

PATCH = 32
"""Grid of a chip's stored score (the run files' per-patch confidence); chip sizes are multiples of it."""
ATTRIBUTES = ("query", "phrase", "route", "score", "class")
"""Chip attributes each object takes from its chip (``class`` is ``object``)."""


@dataclass(frozen=True)
class AoiConfig(ReadFlags):
    """One GeoSeg query over an AOI (flags of ``jobs/geoseg.py --aoi``; how scenes are read,
    :class:`ReadFlags`, also for a single ``--scene``)."""

    aoi: str = field(default="", metadata=doc(
        "area of interest (GeoJSON or any vector file of polygons): answer --query over every scene it touches"))
    catalog: str = field(default=str(DEMO_DIR / "scenes"), metadata=doc(
        "--aoi: scenes, a catalog .parquet or a folder, file:// or s3:// prefix of COGs"))
    query: str = field(default="", metadata=doc("what to segment (the job's --query)"))
    out: str = field(default="", metadata=doc("output folder or s3:// prefix (the job's --out)"))
    fields_run: str = field(default="", metadata=doc(
        "--aoi: a finished map_region run (folder or s3:// prefix): a query for the fields themselves "
        "('fields', 'all farm fields') is answered from its fields without decoding again"))
    chip_size: int = field(default=512, metadata=doc("--aoi: chip side in pixels (a multiple of 32)"))
    overlap: int = field(default=-1, metadata=doc("--aoi: pixels shared by neighbouring chips; -1: chip size / 8"))
    num_actors: int = field(default=1, metadata=doc("GeoSeg actors, each with the pipeline loaded once (--num-actors)"))
    cpus_per_actor: float = field(default=0.5, metadata=doc("Ray CPUs per actor (--cpus-per-actor)"))
    read_cpus: float = field(default=0.25, metadata=doc("--aoi: CPUs reserved per chip read task"))
    chips_per_call: int = field(default=4, metadata=doc(
        "--aoi: chips an actor takes at a time (a killed actor's rerun redoes at most this many)"))
    use_gpu: bool = field(default=False, metadata=doc("--aoi: one GPU per GeoSeg actor"))
    simplify_px: float = field(default=1.0, metadata=doc("--aoi: polygon simplification tolerance in pixels"))
    min_field_px: int = field(default=16, metadata=doc("--aoi: smallest object kept, in pixels"))
    partition_degrees: float = field(default=1.0, metadata=doc(
        "--aoi: side of the lon/lat cells the GeoParquet is partitioned by"))

    def out_root(self) -> str:
        return self.out


def plan_query(cfg: AoiConfig, models, config, store=None):
    """Check every input and resolve the run as a :class:`~magseg_ray.map_region.Plan` whose model
    stage is :class:`GeoSegChips`; nothing is loaded yet (errors name the input and what is wrong)."""
    from magseg_ray.chips.windows import ChipConfig, aoi_fingerprint, chip_windows, load_aoi
    from magseg_ray.fields.rules import FieldRules
    from magseg_ray.geoseg.grounder import check_query
    from magseg_ray.geoseg.run import tiny_folders
    from magseg_ray.map_region import Plan, check_out, uncatalogued
    from magseg_ray.prompt import PromptConfig
    from magseg_ray.scenes.catalog import load_catalog

    query = check_query(cfg.query)
    for name in ("num_actors", "chips_per_call"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.chip_size < PATCH or cfg.chip_size % PATCH:
        raise ConfigError(f"--chip-size {cfg.chip_size}: must be a multiple of {PATCH}")
    if not cfg.out:
        raise ConfigError("--aoi needs --out (a folder or s3:// prefix)")
    check_out(cfg.out)
    cfg.read_config()  # bad --bands or --bit-depth refused before Ray
    chip = ChipConfig.for_chip_size(cfg.chip_size, cfg.overlap)
    aoi = load_aoi(cfg.aoi)
    catalog = load_catalog(cfg.catalog, store, bbox=tuple(aoi.bounds))  # a STAC search asks for the AOI only
    tasks = chip_windows(catalog.scenes, aoi, chip)
    lost = uncatalogued(catalog, aoi)
    models = tiny_folders(models) if models.tiny else models  # built once here, not by each actor
    identity = {"aoi_sha256": aoi_fingerprint(aoi), "query": query, "models": asdict(models),
                "geoseg": asdict(config), "chip": {"chip_size": chip.chip_size, "overlap": chip.overlap}}
    threads = max(int(cfg.cpus_per_actor), 1)
    actor = (GeoSegChips, (models, config, query, cfg.out, store, threads))
    return Plan(cfg, catalog.scenes, aoi, tasks, chip, None, PromptConfig(schema="ai4sf", patch_size=PATCH), "",
                identity, 0.0, FieldRules(), chip_attributes=ATTRIBUTES, actor=actor, lost=lost)


def segment_chip(pipeline, query: str, image: np.ndarray, valid: np.ndarray):
    """One chip through GeoSeg (the AOI job's and ``POST /segment``'s path): grounding in the chip, or
    the whole chip as the box without a grounder, then the routes and fusion. Returns its classes (1
    object, 0 background, no data where not ``valid``), its score on the :data:`PATCH` grid (NaN
    without one), its attributes and the :class:`~magseg_ray.geoseg.pipeline.Result`."""
    from magseg_ray.masks.schemas import NO_DATA

    h, w = valid.shape
    box = None if pipeline.grounder is not None else (0, 0, w, h)
    result = pipeline.segment(image, query, box=box)
    classes = np.where(valid, result.mask, NO_DATA).astype(np.uint8)
    score = np.nan if result.score is None else result.score
    grid = np.full((-(-h // PATCH), -(-w // PATCH)), score, np.float32)
    attributes = {"query": query, "phrase": result.phrase, "route": result.case, "score": result.score,
                  "class": "object", "reason": result.reason}
    return classes, grid, attributes, result


class GeoSegChips:
    """Ray Data ``map_batches`` class of the GeoSeg stage: chip records in, their summaries out (as
    :class:`~magseg_ray.map_region.ChipMapper`'s). Each chip's mask and attributes are written
    before the batch is returned, so a chip that has come out of the actor is finished."""

    def __init__(self, models, config, query: str, files_root: str, store=None, threads: int = 1):
        import torch

        from magseg_ray.geoseg.run import build_pipeline
        from magseg_ray.run_files import RunFiles

        torch.set_num_threads(threads)
        self.pipeline = build_pipeline(models, config)
        self.query = query
        self.files = RunFiles(files_root, store)

    def __call__(self, batch: dict) -> dict:
        """Ray Data ``map_batches`` (numpy format): chip records -> their output summaries."""
        from magseg_ray.errors import MagsegError
        from magseg_ray.run_files import chip_file, encode_chip

        out = []
        for i in range(len(batch["chip_id"])):
            row = {k: batch[k][i] for k in batch}
            error = row["error"] if isinstance(row["error"], str) else None
            record = {"chip_id": row["chip_id"], "scene_id": row["scene_id"], "error": error, "patches": 0,
                      "seconds": 0.0}
            out.append(record)
            if error:
                continue
            start = time.perf_counter()
            try:
                classes, grid, attributes, _ = segment_chip(self.pipeline, self.query, np.asarray(row["image"]),
                                                            np.asarray(row["valid"], bool))
            except MagsegError as e:
                record["error"] = f"{row['chip_id']}: {e}"
                continue
            seconds = time.perf_counter() - start
            patches = len(row["patches"])
            self.files.write(chip_file(row["chip_id"]), encode_chip(classes, grid, patches, seconds, attributes))
            record.update(patches=patches, seconds=seconds)
        return {k: [o[k] for o in out] for k in out[0]} if out else {}


def answer_from_fields(cfg: AoiConfig, store=None) -> dict:
    """The field route over the AOI (see module doc): writes ``fields/``, ``fields.gpkg``,
    ``summary.json`` and ``failures.json`` under ``cfg.out``; returns the summary."""
    from magseg_ray.chips.windows import aoi_fingerprint, load_aoi
    from magseg_ray.fields.polygons import measure
    from magseg_ray.fields.write import read_fields, write_geopackage, write_partitions
    from magseg_ray.geoseg.fieldroute import asks_for_fields
    from magseg_ray.geoseg.grounder import check_query
    from magseg_ray.map_region import check_out, check_output
    from magseg_ray.run_files import RunFiles

    query = check_query(cfg.query)
    if not asks_for_fields(query):
        raise ConfigError(f"--fields-run answers queries for the fields themselves ('fields', 'all farm fields'); "
                          f"{query!r} asks for something else: drop --fields-run to run GeoSeg's models")
    if not cfg.out:
        raise ConfigError("--aoi needs --out (a folder or s3:// prefix)")
    check_out(cfg.out)
    source = RunFiles(cfg.fields_run, store)
    if not source.exists("summary.json"):
        raise ConfigError(f"--fields-run {cfg.fields_run!r} holds no finished map_region run (no summary.json)")
    mapped = json.loads(source.read("summary.json"))
    aoi = load_aoi(cfg.aoi)
    files = RunFiles(cfg.out, store)
    identity = {"aoi_sha256": aoi_fingerprint(aoi), "query": query, "fields_run": cfg.fields_run}
    if not check_output(files, identity):
        files.write("run.json", json.dumps(identity, indent=1))
    fields = read_fields(source)
    fields = fields[fields.intersects(aoi)].copy()
    fields["geometry"] = fields.geometry.intersection(aoi)
    fields = measure(fields.drop(columns=["cell"], errors="ignore"))
    fields = fields.assign(query=query, phrase=query, route="fields-run", score=fields["confidence"])
    files.remove_tree("fields")
    write_partitions(files, "fields", fields, "fields-run", cfg.partition_degrees)
    write_geopackage(files, "fields.gpkg", fields)
    failures = json.loads(source.read("failures.json")) if source.exists("failures.json") else []
    summary = {"status": mapped.get("status", "partial"), "aoi": cfg.aoi, "out": files.root, "query": query,
               "route": "fields-run", "fields_run": cfg.fields_run, "fields": len(fields),
               "field_area_km2": round(float(fields["metrics:area"].sum() / 1e6), 4) if len(fields) else 0.0}
    files.write("summary.json", json.dumps(summary, indent=1))
    files.write("failures.json", json.dumps(failures, indent=1))
    return summary
