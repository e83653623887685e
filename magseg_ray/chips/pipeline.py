"""Ray Data pipelines from catalogued scenes to patch tasks.

1. **Mapping input** (:func:`mapping_chips`): catalog + AOI -> chip windows -> chips read by range
   requests -> the patch tasks of each chip. A record is one chip: its pixels, validity, grid and
   ``patches`` (the boxes of the patches with at least one valid pixel), because the model answers
   a chip's patches together, sharing the chip's prompt prefix.
2. **Training input** (:func:`training_chips`, :func:`patch_records`): scenes + labels (a
   ``--labels`` polygon file or each scene's sidecar: :mod:`magseg_ray.chips.labels`) -> chips
   with their class masks -> patch instruction records (images, prompt, target text, schema).
   Chip records are what is stored (Parquet shards via :func:`write_shards`, one chip image per
   row rather than one per patch); :func:`patch_records` expands a chip into its patch records
   when streaming into training. The train/validation split is by scene, from a hash of the scene
   id (:func:`split_of`), so it is the same on every run and machine.

A scene that cannot be read does not stop a run: its chips come out with ``error`` set (and no
pixels), and :func:`failures` collects them into a table.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from functools import lru_cache

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from PIL import Image
from rasterio.transform import Affine

from magseg_ray.chips.labels import labelled_scenes, read_instances
from magseg_ray.chips.read import Chip, ReadConfig, read_chip
from magseg_ray.chips.windows import ChipConfig, ChipTask, chip_windows
from magseg_ray.cluster import READER_CPUS
from magseg_ray.errors import ConfigError, MagsegError
from magseg_ray.masks.schemas import NO_DATA, classes_from_instances, get_schema
from magseg_ray.prompt import PromptConfig, build_patch_prompt, patch_boxes
from magseg_ray.scenes.overlap import owned_areas


CHIPS_PER_BLOCK = 8
"""Chip tasks per Ray Data block (one read task reads a block). Ray Data's default of about one
task per chip spent more time scheduling than reading: ``benchmarks/streaming.py`` on the 30
naip-fields scenes went from 19.9 s to 10.9 s for 267 chips with blocks of 8, and consecutive
chips of a scene in one task share its cached COG header."""


def split_of(scene_id: str, val_fraction: float, seed: int = 0) -> str:
    """``"val"`` for a deterministic ``val_fraction`` of scene ids, else ``"train"``."""
    digest = hashlib.sha256(f"{seed}:{scene_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def chip_image(chip_record: dict) -> np.ndarray:
    """The RGB image of a labelled chip record (stored as PNG bytes)."""
    return np.asarray(Image.open(io.BytesIO(chip_record["chip_png"])).convert("RGB"))


def _task(row: dict) -> ChipTask:
    """The chip task fields of a Ray record (Ray turns tuples into arrays)."""
    fields = {k: row[k] for k in ChipTask.__dataclass_fields__}
    return ChipTask(**{**fields, "transform": tuple(float(v) for v in fields["transform"]),
                       "bands": tuple(int(v) for v in fields["bands"])})


@lru_cache(maxsize=64)
def _aoi_in(aoi_wkb: bytes, crs: str):
    """The AOI (EPSG:4326 WKB) in a scene CRS, reprojected once per CRS and process."""
    return gpd.GeoSeries.from_wkb([aoi_wkb], crs="EPSG:4326").to_crs(crs).iloc[0]


def _chip_tasks(items: list[dict]):
    """A Ray Dataset of chip task dicts, :data:`CHIPS_PER_BLOCK` to a block."""
    import ray

    return ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // CHIPS_PER_BLOCK)))


def patches_to_answer(valid: np.ndarray, patch_size: int) -> list[tuple[int, int, int, int]]:
    """Boxes of a chip's patches that hold at least one valid pixel: the ones the model answers, in
    a mapping run and in the tile server alike (the others stay no data)."""
    return [b for b in patch_boxes(*valid.shape, patch_size) if valid[b[1]:b[3], b[0]:b[2]].any()]


@dataclass
class _MappingReader:
    """Ray Data ``map`` function: chip task -> chip record with its patch tasks."""

    patch_size: int
    read: ReadConfig
    store: object | None
    areas: dict[str, bytes]
    """Scene id -> the part of the AOI it owns (EPSG:4326 WKB): a chip's pixels outside it are not answered."""

    def __call__(self, row: dict) -> dict:
        task = _task(row)
        # a chip that cannot be read has empty arrays (not None), so that every block of records
        # has the same column types and Ray Data can batch chips that failed with chips that did not
        out = {**row, "error": None, "image": np.zeros((0, 0, 3), np.uint8), "valid": np.zeros((0, 0), bool),
               "patches": np.zeros((0, 4), np.int32)}
        try:
            aoi_local = _aoi_in(self.areas[task.scene_id], task.crs)
            chip = read_chip(task, self.read, aoi_local, self.store)
        except MagsegError as e:
            out["error"] = str(e)
            return out
        boxes = patches_to_answer(chip.valid, self.patch_size)
        out.update(image=chip.image, valid=chip.valid, patches=np.array(boxes, np.int32).reshape(-1, 4))
        return out


def mapping_chips(scenes: gpd.GeoDataFrame, aoi, chip: ChipConfig = ChipConfig(), patch_size: int = 32,
                  read: ReadConfig = ReadConfig(), store=None, read_cpus: float = READER_CPUS, skip=frozenset()):
    """Pipeline 1 as a Ray Dataset of chip records (see module doc); lazy until consumed. Chips
    whose id is in ``skip`` (finished by an earlier run) are left out. Where scenes overlap, each
    place is read from the scene that owns it (:mod:`magseg_ray.scenes.overlap`)."""
    if chip.chip_size % patch_size:
        raise ConfigError(f"chip_size {chip.chip_size} is not a multiple of the patch size {patch_size}")
    tasks = [t for t in chip_windows(scenes, aoi, chip) if t.chip_id not in skip]
    owned = owned_areas(scenes[scenes.intersects(aoi)], aoi)
    reader = _MappingReader(patch_size, read, store, {k: shapely.to_wkb(v) for k, v in owned.items()})
    return _chip_tasks([t.as_dict() for t in tasks]).map(reader, num_cpus=read_cpus)


@dataclass
class _TrainingReader:
    """Ray Data ``map`` function: labelled chip task -> chip record with class mask and split."""

    prompt: PromptConfig
    read: ReadConfig
    store: object | None
    val_fraction: float
    seed: int

    def __call__(self, row: dict) -> dict:
        task = _task(row)
        out = {"chip_id": task.chip_id, "scene_id": task.scene_id, "schema": self.prompt.schema,
               "split": split_of(task.scene_id, self.val_fraction, self.seed), "error": None,
               "chip_png": None, "classes": None}
        try:
            chip = read_chip(task, self.read, store=self.store)
            classes = read_chip_classes(row["labels"], task, self.prompt, self.store)
        except (MagsegError, rasterio.errors.RasterioError) as e:
            out["error"] = str(e)
            return out
        out.update(chip_png=_png(chip.image), classes=np.where(chip.valid, classes, NO_DATA).astype(np.uint8))
        return out


def read_chip_classes(labels: str, task: ChipTask, prompt: PromptConfig, store) -> np.ndarray:
    """Class mask of a chip from its scene's labels (:func:`~magseg_ray.chips.labels.read_instances`),
    derived with a margin so that field boundaries on the chip's edge see the neighbouring field
    outside it."""
    m = prompt.boundary_width
    scene_grid = Affine(*task.transform) @ Affine.translation(-task.col_off, -task.row_off)
    inst = read_instances(labels, task.crs, scene_grid, task.row_off - m, task.col_off - m,
                          task.size + 2 * m, task.size + 2 * m, store)
    classes = classes_from_instances(inst, prompt.schema, m)
    return classes[m:-m, m:-m] if m else classes


def training_chips(scenes: gpd.GeoDataFrame, aoi, chip: ChipConfig = ChipConfig(overlap=0),
                   prompt: PromptConfig = PromptConfig(), read: ReadConfig = ReadConfig(), store=None,
                   val_fraction: float = 0.2, seed: int = 0, read_cpus: float = READER_CPUS, split: str | None = None,
                   labels: str = ""):
    """Pipeline 2 as a Ray Dataset of labelled chip records (see module doc); ``aoi`` None: all
    scenes; ``labels`` a polygon file for all of them (empty: each scene's sidecar). ``split`` ("train" or "val") plans only the chips of that split's scenes. Chips come in
    a seeded random order rather than scene by scene."""
    schema = get_schema(prompt.schema)
    if schema.name == "alu":
        raise ConfigError("schema 'alu' needs class rasters; scene labels are field instance rasters "
                          "(use fields3 or ai4sf)")
    labelled = labelled_scenes(scenes, labels, "the catalogued scenes")
    if split is not None:
        n = len(labelled)
        labelled = labelled[[split_of(s, val_fraction, seed) == split for s in labelled["id"]]]
        if labelled.empty:
            raise ConfigError(f"no labelled scene falls in the {split!r} split (val_fraction={val_fraction}, "
                              f"{n} labelled scenes): raise --val-fraction or add scenes")
    tasks = chip_windows(labelled, aoi if aoi is not None else labelled.union_all(), chip)
    labels_of = dict(zip(labelled["id"], labelled["labels"]))
    items = [{**t.as_dict(), "labels": labels_of[t.scene_id]} for t in tasks]
    # chips of one scene look alike: a seeded permutation spreads them over the epoch (same on every run)
    random.Random(seed).shuffle(items)
    return _chip_tasks(items).map(_TrainingReader(prompt, read, store, val_fraction, seed), num_cpus=read_cpus)


def patch_records(chip_record: dict, prompt: PromptConfig = PromptConfig()) -> list[dict]:
    """A labelled chip record's patch instruction records (patches that lie wholly in the scene)."""
    if chip_record.get("error"):
        return []
    image = chip_image(chip_record)
    classes = np.asarray(chip_record["classes"]).reshape(image.shape[:2])
    records = []
    for box in patch_boxes(*classes.shape, prompt.patch_size):
        x0, y0, x1, y1 = box
        if (classes[y0:y1, x0:x1] == NO_DATA).any():
            continue
        p = build_patch_prompt(image, box, prompt, labels=np.where(classes == NO_DATA, 0, classes))
        records.append({"chip_id": chip_record["chip_id"], "split": chip_record["split"], "schema": prompt.schema,
                        "box": box, "images": p.images, "prompt": p.text, "target": p.target})
    return records


def validation_patches(chips, n: int, prompt: PromptConfig = PromptConfig()) -> list[dict]:
    """``n`` patch records of the first labelled chips of the dataset ``chips``, in a fixed shuffle:
    from at least ``n // 8`` chips, so they spread over several, and from more chips while the
    first hold fewer than ``n`` whole patches (chips on a scene's edge hold few). Fewer than ``n``
    only when the dataset runs out."""
    records, taken = [], 0
    for chip in chips.iter_rows():
        records.extend(patch_records(chip, prompt))
        taken += 1
        if taken >= max(n // 8, 1) and len(records) >= n:
            break
    random.Random(0).shuffle(records)
    return records[:n]


def write_shards(ds, out_uri: str, filesystem=None) -> None:
    """Write chip records as Parquet shards under ``out_uri`` (local path or ``s3://`` with a filesystem)."""
    ds.write_parquet(out_uri, filesystem=filesystem)


def failures(records) -> list[dict]:
    """The ``(chip_id, uri, error)`` of the chip records that failed."""
    return [{"chip_id": r["chip_id"], "uri": r.get("uri"), "error": r["error"]} for r in records if r.get("error")]


def chip_of(record: dict) -> Chip:
    """A mapping record back as a :class:`Chip`."""
    return Chip(_task(record), np.asarray(record["image"]), np.asarray(record["valid"]))
