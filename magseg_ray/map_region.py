"""map_region: an AOI -> a field map (GeoParquet + GeoPackage), on any Ray cluster.

Stages (each in its own module):

1. plan (:func:`~magseg_ray.chips.windows.chip_windows`): the chips of every scene the AOI touches;
   chips whose output exists are finished and skipped, so a rerun resumes; a scene under a folder or
   prefix catalog that cannot be catalogued (truncated, damaged) and may lie in the AOI is a failure;
2. Ray Data (:func:`~magseg_ray.chips.pipeline.mapping_chips`): chips read by range requests, then
   a pool of model actors (:class:`ChipMapper`, one GPU each on GPU clusters, fractional CPUs
   here) that answer every patch with prefix reuse
   (:class:`~magseg_ray.model.segmenter.ChipSegmenter`) and write each chip's output atomically;
3. reducer, one Ray task per scene: stitch its chips (:mod:`magseg_ray.stitch.mosaic`), write the
   scene's class raster, polygonize and measure fields (:mod:`magseg_ray.fields.polygons`), clip
   to what the scene owns and set seam pieces aside (:mod:`magseg_ray.fields.seams`), write the
   rest as GeoParquet partitions (:mod:`magseg_ray.fields.write`);
4. on the driver: merge seam pieces, write them, one GeoPackage, ``summary.json``,
   ``failures.json`` and ``preview.png``.

The run ends ``complete`` (every chip mapped) or ``partial`` (some chips or scenes failed: their
area is unmapped, the failures are listed on stderr and in ``failures.json``, and rerunning the
same command retries them); ``summary.json``'s ``status`` says which.

Fields are written to ``fields.partial/`` and moved to ``fields/`` when complete, so an
interrupted reduce leaves the previous map in place.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import pandas as pd

from magseg_ray.chips.radiometry import ReadFlags
from magseg_ray.config import doc, dtype_field
from magseg_ray.errors import ConfigError, ModelLoadError, OutputError
from magseg_ray.progress import Progress
from magseg_ray.scenes.select import StacSelect

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
"""Bundled demo: scenes (``scenes/``) and an AOI (``demo.geojson``) spanning them."""


def demo_chips(chip_size: int, count: int) -> list:
    """The first ``count`` whole chips (RGB arrays) of the bundled demo NAIP scene, in window order:
    what the mapping benchmark and the decoder's tests answer."""
    from magseg_ray.chips.read import read_chip
    from magseg_ray.chips.windows import ChipConfig, chip_windows
    from magseg_ray.scenes.catalog import load_catalog

    scenes = load_catalog(DEMO_DIR / "scenes").scenes
    naip = scenes[scenes["id"].str.startswith("naip")]
    tasks = chip_windows(naip, gpd.GeoSeries(naip.geometry).union_all(), ChipConfig(chip_size, 0))[:count]
    return [read_chip(t).image for t in tasks]



@dataclass(frozen=True)
class MapSettings(StacSelect, ReadFlags):
    """Settings every map made with a model has: a mapping run's (:class:`MapConfig`) and the tile
    server's (:class:`~magseg_ray.serve.settings.ServeSettings`); STAC's item choice (:class:`StacSelect`) and
    how scenes are read (:class:`ReadFlags`)."""

    catalog: str = field(default=str(DEMO_DIR / "scenes"), metadata=doc(
        "scenes: a catalog .parquet; a STAC catalog.json or collection.json (path, file://, s3://, https://), "
        "a STAC API (https://.../search) or STAC GeoParquet (.parquet of items); or a folder, file:// or s3:// prefix of COGs"))
    model: str = field(default="", metadata=doc("model folder (Gemma3 checkpoint); default: the shipped demo model"))
    overlap: int = field(default=-1, metadata=doc("pixels shared by neighbouring chips; -1: chip size / 8"))
    max_new_tokens: int = field(default=0, metadata=doc("answer token budget per patch; 0: the longest mask text"))
    simplify_px: float = field(default=1.0, metadata=doc("polygon simplification tolerance in pixels (x GSD)"))
    min_field_px: int = field(default=16, metadata=doc("smallest field kept, in pixels"))
    seed_px: float = field(default=-1.0, metadata=doc(
        "fields grow from interior cores deeper than this many pixels, so a boundary drawn with gaps still "
        "separates fields; -1: the model card's field_seed_px; 0: each interior component is a field"))
    def model_dir(self) -> str:
        from magseg_ray.model.checkpoint import DEMO_MODEL

        return self.model or str(DEMO_MODEL)


@dataclass(frozen=True)
class MapConfig(MapSettings):
    """Settings of one mapping run (and of every map, :class:`MapSettings`)."""

    aoi: str = field(default=str(DEMO_DIR / "demo.geojson"), metadata=doc(
        "area of interest: GeoJSON or any vector file of polygons (EPSG:4326 unless it declares a CRS)"))
    out: str = field(default="", metadata=doc("output folder or s3:// prefix; default: maps/<AOI file name>"))
    chip_size: int = field(default=0, metadata=doc("chip side in pixels; 0: what the model was trained with"))
    num_actors: int = field(default=1, metadata=doc("model actors (one GPU each with --use-gpu)"))
    use_gpu: bool = field(default=False, metadata=doc("one GPU per model actor (else the actors decode on the CPU)"))
    dtype: str = dtype_field()
    cpus_per_actor: float = field(default=1.0, metadata=doc("CPUs reserved per model actor (and its torch threads)"))
    read_cpus: float = field(default=0.25, metadata=doc("CPUs reserved per chip read task"))
    batch_size: int = field(default=64, metadata=doc("patches decoded together (they share the chip's KV prefix)"))
    chips_per_call: int = field(default=8, metadata=doc(
        "chips a model actor decodes as one continuous batch (one chip's long answers overlap the next chip's "
        "patches); a killed actor's rerun redoes at most this many chips"))
    min_field_m2: float = field(default=-1.0, metadata=doc(
        "pieces smaller than this (m²) merge into the neighbour they share most edge with (no neighbour: dropped); "
        "-1: the model card's field_min_m2; 0: off"))
    max_field_m2: float = field(default=-1.0, metadata=doc(
        "pieces larger than this (m²) are dropped; -1: the model card's field_max_m2; 0: no maximum"))
    hole_m2: float = field(default=-1.0, metadata=doc(
        "holes a field alone encloses, smaller than this (m²), are filled (inf: all); -1: the model card's "
        "field_hole_m2; 0: off"))
    simplify_m: float = field(default=-1.0, metadata=doc(
        "polygon simplification tolerance in metres; -1: the model card's field_simplify_m; 0: --simplify-px"))
    edge_quantile: float = field(default=-1.0, metadata=doc(
        "split pieces where the scene image shows an edge across them, edges being pixels above this quantile "
        "(0-1) of edge strength (magseg_ray/fields/edges.py); -1: the model card's field_edge_quantile; 0: off"))
    partition_degrees: float = field(default=1.0, metadata=doc("side of the lon/lat cells the GeoParquet is partitioned by"))

    def out_root(self) -> str:
        return self.out or str(Path("maps") / Path(self.aoi).stem)


@dataclass
class Plan:
    """What a run maps, resolved from the config before any Ray work."""

    config: MapConfig
    scenes: gpd.GeoDataFrame
    aoi: object
    tasks: list
    chip: object
    card: object
    """The model card (:class:`~magseg_ray.model.card.ModelPrompt`), read once per run."""
    prompt: object
    model_dir: str
    identity: dict
    seed_px: float
    """Core depth of the fields step (``MapConfig.seed_px`` resolved against the model card)."""
    rules: object = None
    """The fields step's :class:`~magseg_ray.fields.rules.FieldRules` (flags resolved against the model card)."""
    chip_attributes: tuple = ()
    """Attributes the chip outputs carry that become field columns (GeoSeg's query, phrase, route, score)."""
    actor: tuple | None = None
    """The model stage's Ray Data class and its constructor arguments (GeoSeg's chip actor); None:
    :class:`ChipMapper` of the plan's model."""
    lost: list = field(default_factory=list)
    """Failures (``chip_id`` ``None``) of the scenes under a folder or prefix catalog that could not be
    catalogued and may lie in the AOI (footprint unknown or touching it): their area is unmapped."""


def plan(cfg: MapConfig, store=None) -> Plan:
    """Check every input and resolve the run (errors name the input and what is wrong)."""
    from magseg_ray.chips.windows import aoi_fingerprint, chip_windows, load_aoi
    from magseg_ray.fields.rules import resolve_rules
    from magseg_ray.model.card import mapping_settings
    from magseg_ray.model.checkpoint import check_checkpoint_dir
    from magseg_ray.scenes.catalog import load_catalog

    for name in ("batch_size", "chips_per_call", "num_actors"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} {getattr(cfg, name)}: must be at least 1")
    model_dir = cfg.model_dir()
    if not Path(model_dir).is_dir() and not cfg.model:
        raise ModelLoadError(f"the demo model is missing at {model_dir}; pass --model")
    check_checkpoint_dir(model_dir)
    m = mapping_settings(model_dir, cfg.chip_size, cfg.overlap, cfg.seed_px)
    check_out(cfg.out_root())
    aoi = load_aoi(cfg.aoi)
    catalog = load_catalog(cfg.catalog, store, StacSelect.of(cfg), bbox=tuple(aoi.bounds))
    scenes = catalog.scenes
    tasks = chip_windows(scenes, aoi, m.chip)
    lost = uncatalogued(catalog, aoi)
    cfg.read_config(m.card)  # bad --bands, --bit-depth or card radiometry refused before any work
    rules = resolve_rules(m.card, cfg.min_field_m2, cfg.max_field_m2, cfg.hole_m2, cfg.simplify_m, cfg.edge_quantile)
    chips_by = {k: v for k, v in asdict(m.card).items() if not k.startswith("field_")}  # the fields step reruns on resume
    identity = {"aoi_sha256": aoi_fingerprint(aoi), "model": m.fingerprint, "model_prompt": chips_by,
                "chip": {"chip_size": m.chip.chip_size, "overlap": m.chip.overlap}}
    if cfg.bands or cfg.bit_depth:  # chips read another way are another map (absent: each file's own)
        identity["read"] = {"bands": cfg.bands, "bit_depth": cfg.bit_depth}
    return Plan(cfg, scenes, aoi, tasks, m.chip, m.card, m.card.prompt(), model_dir, identity, m.seed_px, rules,
                lost=lost)


def uncatalogued(catalog, aoi) -> list[dict]:
    """Failures (``chip_id`` None) of the scenes under a folder or prefix catalog that could not be
    catalogued and may lie in the AOI (footprint unknown or touching it)."""
    return [{"chip_id": None, "scene_id": Path(f.uri).stem, "error": f"{f.uri}: not catalogued: {f.reason}"}
            for f in catalog.failures.itertuples() if f.footprint is None or f.footprint.intersects(aoi)]


def scene_choice(p: Plan) -> dict:
    """Which scene each chip and field came from, for ``summary.json``: the overlap rule
    (:mod:`magseg_ray.scenes.overlap`), the scenes used in its order (time, cloud, chips: a chip's id
    and output path, ``chips/<scene_id>/...``, and each field's ``scene_id`` name the scene), and the
    scenes the AOI touches that own none of it."""
    from collections import Counter

    from magseg_ray.scenes.overlap import scene_order

    chips = Counter(t.scene_id for t in p.tasks)
    hits = p.scenes[p.scenes.intersects(p.aoi)].set_index("id", drop=False)
    used = [{"id": i, "datetime": None if pd.isna(hits.at[i, "datetime"]) else hits.at[i, "datetime"].isoformat(),
             "cloud_cover": None if pd.isna(hits.at[i, "cloud_cover"]) else float(hits.at[i, "cloud_cover"]),
             "chips": chips[i]} for i in scene_order(hits) if chips[i]]
    return {"rule": "newest, then least cloud, then id", "scenes": used,
            "unused": sorted(str(i) for i in hits["id"] if not chips[i])}


def check_out(out: str) -> None:
    """A local ``--out`` must be a folder, or not exist below a folder: refuse a file in its way."""
    from magseg_ray.scenes.store import split_uri

    scheme, local = split_uri(out)
    if scheme != "file":
        return
    path = Path(local)
    for at in (path, *path.parents):
        if at.exists():
            if not at.is_dir():
                what = "is a file" if at == path else f"lies below the file {str(at)!r}"
                raise ConfigError(f"--out {out!r} {what}: name a folder (new or a run's) or an s3:// prefix")
            return


def check_output(files, identity: dict) -> bool:
    """Whether ``files`` already holds this run (resume); refuse a folder made for another AOI or model
    (or holding anything but logs)."""
    from magseg_ray.run_files import LOGS

    if not files.exists("run.json"):
        if [f for f in files.listdir("") if not f.startswith(LOGS)]:
            raise ConfigError(f"output {files.root!r} is not empty and holds no run.json: choose a new --out")
        return False
    old = json.loads(files.read("run.json"))
    changed = [k for k in identity if old.get(k) != identity[k]]
    if changed:
        raise ConfigError(f"output {files.root!r} holds a run with a different {', '.join(changed)}: "
                          "rerun with its original settings to resume, or choose a new --out")
    return True


def interrupted_note(p: Plan, store=None) -> str:
    """What an interrupted run kept and how to resume it, in one line."""
    from magseg_ray.run_files import RunFiles, finished_chips

    files = RunFiles(p.config.out_root(), store)
    done = len(finished_chips(files) & {t.chip_id for t in p.tasks})
    return (f"{done} of {len(p.tasks)} chips are finished and kept in {files.root}; "
            "rerun the same command to resume")


class ChipMapper:
    """Ray Data ``map_batches`` class of the mapping stage: chip records (from ``mapping_chips``) in,
    their output summaries out. Each actor loads the model once
    (:class:`~magseg_ray.model.segmenter.ChipSegmenter`); each chip's classes and per-patch
    confidence are written atomically to the run's files before the batch is returned, so a chip
    that has come out of the actor is finished even if the job dies right after."""

    def __init__(self, model_dir: str, card, batch_size: int, max_new_tokens: int | None, files_root: str,
                 store=None, threads: int | None = None, dtype: str = "auto"):
        from magseg_ray.model.segmenter import ChipSegmenter
        from magseg_ray.run_files import RunFiles

        self.segmenter = ChipSegmenter(model_dir, card, batch_size, max_new_tokens, threads, dtype)
        self.files = RunFiles(files_root, store)

    def __call__(self, batch: dict) -> dict:
        """Ray Data ``map_batches`` (numpy format): chip records -> their output summaries."""
        import numpy as np

        from magseg_ray.errors import MagsegError
        from magseg_ray.run_files import chip_file, encode_chip

        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["chip_id"]))]
        # a read error is a string; "none" comes through a numpy batch as None or NaN
        out = [{"chip_id": r["chip_id"], "scene_id": r["scene_id"], "error": r["error"] if isinstance(r["error"], str) else None,
                "patches": 0, "seconds": 0.0} for r in rows]
        todo = [i for i, o in enumerate(out) if o["error"] is None]
        chips = [(np.asarray(rows[i]["image"]), np.asarray(rows[i]["valid"], bool),
                  [tuple(int(v) for v in b) for b in rows[i]["patches"]]) for i in todo]
        start = time.perf_counter()
        results = self.segmenter.segment_chips(chips)
        seconds = time.perf_counter() - start
        total = max(sum(len(c[2]) for c in chips), 1)
        for i, chip, result in zip(todo, chips, results):
            if isinstance(result, MagsegError):
                out[i]["error"] = f"{rows[i]['chip_id']}: {result}"
                continue
            share = seconds * len(chip[2]) / total  # the batch's time, split by patches
            self.files.write(chip_file(out[i]["chip_id"]), encode_chip(*result, len(chip[2]), share))
            out[i].update(patches=len(chip[2]), seconds=share)
        return {k: [o[k] for o in out] for k in out[0]} if out else {}


def run_map_region(p: Plan, store=None) -> dict:
    """Map a planned run (:func:`plan`, made with the same ``store``) on the current Ray cluster;
    returns the run summary (also ``summary.json``). An output that cannot be written (disk full)
    ends the run with an :class:`OutputError` naming the file, what is kept, and how to resume."""
    from magseg_ray.fields.reduce import reduce_run
    from magseg_ray.scenes.store import ObjectStore
    from magseg_ray.run_files import RunFiles, finished_chips

    store = store or ObjectStore.from_env()
    files = RunFiles(p.config.out_root(), store)
    resuming = check_output(files, p.identity)
    failures: list[dict] = list(p.lost)
    done: set[str] = set()
    try:
        if not resuming:
            files.write("run.json", json.dumps(p.identity, indent=1))
        done = finished_chips(files)
        todo = [t for t in p.tasks if t.chip_id not in done]
        resumed = len(p.tasks) - len(todo)
        print(f"[map] {len(p.tasks)} chips in {p.scenes.shape[0]} catalogued scenes; {resumed} already done", flush=True)
        start = time.perf_counter()
        patches = _map_chips(p, files, store, done, len(todo), resumed, failures) if todo else 0
        model_seconds = time.perf_counter() - start
        summary = reduce_run(p, files, store, failures)
        summary = {"status": "partial" if failures else "complete", **summary}
        chips_failed = sum(1 for f in failures if f["chip_id"])
        summary.update(scene_choice=scene_choice(p), chips=len(p.tasks), chips_resumed=resumed, chips_failed=chips_failed,
                       scenes_failed=len(failures) - chips_failed,
                       patches_this_run=patches, model_seconds=round(model_seconds, 2),
                       patches_per_s=round(patches / model_seconds, 2) if patches else None)
        files.write("summary.json", json.dumps(summary, indent=1))
        files.write("failures.json", json.dumps(failures, indent=1))
    except OutputError as e:
        if files.scheme == "s3":
            return _output_store_lost(p, files, failures, done, e)
        raise OutputError(f"{e}; {interrupted_note(p, store)} once the cause is gone") from None
    if failures:
        _report_failures(failures, len(p.tasks), files)
    return summary


def _output_store_lost(p: Plan, files, failures: list[dict], done: set[str], error: OutputError) -> dict:
    """End a run whose ``s3://`` output stayed unreachable past the retries: ``partial``, every chip not
    known written listed as failed with the cause; ``summary.json`` and ``failures.json`` written if
    the store answers again. A rerun when it is back resumes."""
    failed = {f["chip_id"] for f in failures}
    lost = f"not known to be written: {error}"
    failures = failures + [{"chip_id": t.chip_id, "scene_id": t.scene_id, "error": lost}
                           for t in p.tasks if t.chip_id not in done and t.chip_id not in failed]
    chips_failed = sum(1 for f in failures if f["chip_id"])
    summary = {"status": "partial", "aoi": p.config.aoi, "out": files.root, "chips": len(p.tasks),
               "chips_failed": chips_failed, "scenes_failed": len(failures) - chips_failed}
    try:
        files.write("summary.json", json.dumps(summary, indent=1))
        files.write("failures.json", json.dumps(failures, indent=1))
    except OutputError as e:
        print(f"[map] the output store is still unreachable: {e}; the failures are listed here only", file=sys.stderr)
    _report_failures(failures, len(p.tasks), files)
    return summary


def _map_chips(p: Plan, files, store, done: set, todo: int, resumed: int, failures: list[dict]) -> int:
    """The model stage: every chip not ``done`` through Ray Data to the model actors, which write each
    chip's output; written chips are added to ``done``, failed ones appended to ``failures``. Returns
    the patches answered."""
    from magseg_ray.chips.pipeline import mapping_chips
    from magseg_ray.run_files import finished_chips

    cfg = p.config
    threads = max(int(cfg.cpus_per_actor), 1)
    ds = mapping_chips(p.scenes, p.aoi, p.chip, p.prompt.patch_size, cfg.read_config(p.card), store=store,
                       read_cpus=cfg.read_cpus, skip=done)
    actor, args = p.actor or (ChipMapper, (p.model_dir, p.card, cfg.batch_size, cfg.max_new_tokens or None,
                                           files.root, store, threads, cfg.dtype))
    ds = ds.map_batches(actor, fn_constructor_args=args,
                        batch_size=cfg.chips_per_call, batch_format="numpy", concurrency=cfg.num_actors,
                        num_cpus=cfg.cpus_per_actor, num_gpus=1 if cfg.use_gpu else 0)
    finished, patches = 0, 0

    def written() -> tuple[int, str]:  # chips the actors wrote, seen before Ray Data hands their rows back
        return len(finished_chips(files)) - resumed, ""

    try:
        with Progress("[map] chips", total=todo, unit="chips", poll=written) as progress:
            for row in ds.iter_rows():
                finished += 1
                patches += int(row["patches"])
                if row["error"]:
                    failures.append({"chip_id": row["chip_id"], "scene_id": row["scene_id"], "error": row["error"]})
                else:
                    done.add(row["chip_id"])
                progress.update(finished, f"{resumed} resumed before, {len(failures)} failed, {patches} patches")
    except Exception as e:
        raise _output_error_in(e) or e
    return patches


def _output_error_in(e: Exception) -> OutputError | None:
    """The :class:`OutputError` a model actor raised, if it is what stopped the stage. Ray Data hands the
    driver a ``UserCodeException`` that keeps the actor's error only as traceback text."""
    found = re.findall(rf"^{re.escape(OutputError.__module__)}\.OutputError: (.+)$", str(e), re.M)
    return OutputError(found[-1]) if found else None


def _report_failures(failures: list[dict], chips: int, files, shown: int = 20) -> None:
    """List what is missing from a partial map on stderr, and how to retry it."""
    chips_failed = sum(1 for f in failures if f["chip_id"])
    scenes = f" and {len(failures) - chips_failed} scenes" if len(failures) > chips_failed else ""
    print(f"[map] partial map: {chips_failed} of {chips} chips{scenes} failed; their area is unmapped "
          f"(all in {files.uri('failures.json')}); rerun the same command to retry them", file=sys.stderr)
    for f in failures[:shown]:
        print(f"[map]   {f['chip_id'] or f['scene_id'] or '-'}: {f['error']}", file=sys.stderr)
    if len(failures) > shown:
        print(f"[map]   ... and {len(failures) - shown} more", file=sys.stderr)
