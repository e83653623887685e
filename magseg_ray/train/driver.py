"""The driver side both training jobs share: run settings, the chips, the run's outputs.

SFT (:func:`magseg_ray.train.sft.run_sft`) and GRPO (:func:`magseg_ray.train.grpo.run_grpo`) drive a
run the same way, kept here once:

- :class:`RunConfig`: the settings every run has (its name and storage, the labelled scenes and
  their chips, the worker group); a job's config extends it and says how its base model loads
  (``load_base``), which prompt settings its models carry (``model_prompt``) and in which dtype
  its merged model is stored (``export_dtype``);
- :func:`chip_splits`: the catalog read once, its training or validation chips on demand;
- :func:`save_outputs`: the last checkpoint's ``adapter/`` (or ``model/``) copied under the run
  folder, ``model/`` made from it (:func:`export_merged`) with the run's model card;
- :func:`export_merged`: the base with an adapter merged in, a plain checkpoint every job loads;
- :func:`write_summary`: ``metrics.json`` and ``curves.png``;
- :data:`PROGRESS_FILE`: where rank 0 writes its step for the driver's progress line.

Ray, torch and the catalog readers are imported inside the functions that use them: the jobs
import this module to build their ``--help``, which stays light.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from magseg_ray.chips.radiometry import ReadFlags
from magseg_ray.config import TRAIN_DTYPES, doc, dtype_field
from magseg_ray.files import write_atomic
from magseg_ray.prompt import PromptConfig
from magseg_ray.scenes.select import StacSelect

PROGRESS_FILE = "progress.json"
"""Under the run folder: rank 0's last step (:func:`magseg_ray.progress.write_progress`), which the driver's
progress line follows; the workers' own output is not on the driver's terminal unless ``--verbose``."""


def run_name_field(default: str):
    """The ``run_name`` field of a job's config, with that job's default name."""
    return field(default=default, metadata=doc("run name; rerunning with the same name resumes it"))


@dataclass(frozen=True)
class RunConfig(StacSelect, ReadFlags):
    """Settings every training run has (STAC's item choice too, :class:`StacSelect`, and how scenes are
    read, :class:`ReadFlags`); SFT's and GRPO's configs extend it."""

    run_name: str = run_name_field("run")
    storage: str = field(default="runs", metadata=doc("folder holding runs (checkpoints and outputs)"))
    data: str = field(default="", metadata=doc(
        "scenes with labels: catalog .parquet, STAC (catalog.json, collection.json, API URL, STAC GeoParquet; "
        "assets 'labels' are the label rasters), folder, file:// or s3:// prefix"))
    labels: str = field(default="", metadata=doc(
        "field polygons for the scenes (fiboa GeoParquet, GeoPackage, shapefile; one layer for many scenes, any "
        "CRS); default: each scene's <id>.labels.tif or <id>.fields.gpkg"))
    chip_size: int = field(default=256, metadata=doc("chip side in pixels (a multiple of the patch)"))
    val_fraction: float = field(default=0.2, metadata=doc("share of scenes held out for validation (by scene id hash)"))
    num_workers: int = field(default=2, metadata=doc("Ray Train workers"))
    use_gpu: bool = field(default=False, metadata=doc("one GPU per worker (NCCL); else CPU (gloo)"))
    dtype: str = dtype_field(TRAIN_DTYPES)
    cpus_per_worker: float = field(default=1.0, metadata=doc("CPUs reserved per worker"))
    max_failures: int = field(default=1, metadata=doc("worker-group restarts allowed after a failure"))

    def model_prompt(self):
        """The prompt settings of this run's models (``magseg.json``); each job says how."""
        raise NotImplementedError

    def load_base(self):
        """``(model, processor)`` the run starts from; each job says how."""
        raise NotImplementedError

    def export_dtype(self):
        """The torch dtype the merged model is stored in (None: as it comes)."""
        return None

    def prompt(self) -> PromptConfig:
        return self.model_prompt().prompt()

    @property
    def run_dir(self) -> Path:
        return Path(self.storage).resolve() / self.run_name


def chip_splits(cfg: RunConfig, prompt: PromptConfig):
    """A function of ``split`` (``"train"`` or ``"val"``): that split's chip records of ``cfg.data``
    (:func:`~magseg_ray.chips.pipeline.training_chips`), the catalog read once."""
    from magseg_ray.chips.pipeline import training_chips
    from magseg_ray.chips.windows import ChipConfig
    from magseg_ray.scenes.catalog import load_catalog
    from magseg_ray.scenes.store import ObjectStore

    store = ObjectStore.from_env()
    scenes = load_catalog(cfg.data, store, StacSelect.of(cfg)).scenes
    read = cfg.read_config()

    def chips(split: str):
        return training_chips(scenes, None, ChipConfig(cfg.chip_size, 0), prompt, read, store=store,
                              val_fraction=cfg.val_fraction, split=split, labels=cfg.labels)

    return chips


def export_merged(cfg: RunConfig, adapter: Path, out: Path) -> Path:
    """The run's base with ``adapter`` merged in, saved as a plain checkpoint that every job loads
    with ``--model`` (and GRPO starts its own LoRA from), in ``cfg.export_dtype()``, with the run's
    model card (so its decoding and fields settings)."""
    from magseg_ray.model.card import write_model_prompt
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.lora import load_adapter

    model, processor = cfg.load_base()
    merged = load_adapter(model, adapter).merge_and_unload()
    dtype = cfg.export_dtype()
    save_model(merged.to(dtype) if dtype else merged, processor, out)
    write_model_prompt(out, cfg.model_prompt())
    return out


def save_outputs(cfg: RunConfig, result) -> dict:
    """The run state of the fit ``result``'s last checkpoint; its ``adapter/`` or ``model/`` copied
    under ``cfg.run_dir``, and ``model/`` (the adapter merged in) with the run's model card."""
    from magseg_ray.model.card import write_model_prompt

    out = cfg.run_dir
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / "state.json").read_text())
        whole = (Path(d) / "model").is_dir()  # a run training every weight checkpoints the model itself
        name = "model" if whole else "adapter"
        shutil.copytree(Path(d) / name, out / name, dirs_exist_ok=True)
    if whole:
        write_model_prompt(out / "model", cfg.model_prompt())
    else:
        export_merged(cfg, out / "adapter", out / "model")
    return state


def write_summary(cfg: RunConfig, summary: dict, curves: list[str], title: str) -> dict:
    """``summary`` with the run's config and model path, written to ``metrics.json``; its history's
    ``curves`` drawn to ``curves.png`` under ``title``."""
    from magseg_ray.train.curves import plot_curves

    out = cfg.run_dir
    summary = {"config": dataclasses.asdict(cfg), **summary, "model": str(out / "model")}
    write_atomic(out / "metrics.json", json.dumps(summary, indent=1))
    plot_curves(summary["history"], curves, out / "curves.png", title)
    return summary
