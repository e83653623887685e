"""The demo model's training recipe as one run: dense vision pretraining, then frozen-tower SFT.

One command trains the demo model on whatever the machine has (the same code on a GPU in minutes,
or on a laptop CPU with fewer steps):

1. :func:`~magseg_ray.train.vision.pretrain_vision` (skipped with ``vision_steps`` 0): the tower
   and projector learn per-pixel classes at the crop's finest resolution (``crop_scale`` 1,
   ``sub_cells`` 4), at the answers' boundary width, on the training split.
2. :func:`~magseg_ray.train.sft.run_sft` with the tower frozen and its image tokens cached
   (``freeze_vision``), every decoder weight trained (``full``), the short instruction.

Outputs in ``out``: ``vision/`` (step 1's model), ``sft/`` (the SFT run: checkpoints, curves),
``model/`` (the trained model, what every job's ``--model`` takes) and ``metrics.json`` (both
steps' summaries and the wall-clock seconds of each). Rerunning the command resumes: a finished
pretraining is kept, and SFT resumes from its latest checkpoint. The data are labelled scenes on disk (the
30 naip-fields scenes are 16 MB), so a GPU machine needs nothing prepared beyond a copy of them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.files import write_atomic
from magseg_ray.model.checkpoint import DEMO_MODEL


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of one run of the demo model's recipe."""

    data: str = field(default="", metadata=doc("labelled scenes (folder or catalog, as SFT's --data)"))
    out: str = field(default="", metadata=doc("new folder for the run's outputs"))
    base: str = field(default=str(DEMO_MODEL), metadata=doc(
        "model to start from: the shipped demo model (training carries over between days), a checkpoint "
        "folder or an offline preset (tiny, small)"))
    vision_steps: int = field(default=1000, metadata=doc("dense vision pretraining steps (0: keep the base's tower)"))
    vision_batch_size: int = field(default=32, metadata=doc("patch prompts per vision pretraining step"))
    vision_lr: float = field(default=5e-4, metadata=doc("peak learning rate of vision pretraining"))
    sft_steps: int = field(default=1000, metadata=doc("SFT optimizer steps"))
    batch_size: int = field(default=16, metadata=doc("SFT patches per worker per step"))
    lr: float = field(default=3e-4, metadata=doc("peak SFT learning rate"))
    boundary_width: int = field(default=6, metadata=doc("boundary half-width of the answers (see SFT)"))
    uniform_keep: float = field(default=0.2, metadata=doc("share of single-class patches kept (see SFT)"))
    use_gpu: bool = field(default=False, metadata=doc("train on GPUs (one per SFT worker)"))
    num_workers: int = field(default=2, metadata=doc("SFT workers (Ray Train + DeepSpeed)"))
    cpus_per_worker: float = field(default=0.75, metadata=doc("CPUs reserved per SFT worker"))
    eval_every: int = field(default=100, metadata=doc("SFT steps between validations"))
    checkpoint_every: int = field(default=50, metadata=doc("SFT steps between checkpoints"))
    val_patches: int = field(default=64, metadata=doc("validation patches scored at each validation"))


def run_recipe(cfg: RecipeConfig) -> dict:
    """Run both steps (see module doc); return the summary written to ``metrics.json``."""
    from magseg_ray.train.sft import SFTConfig, check_config, run_sft
    from magseg_ray.train.vision import VisionPretrainConfig, pretrain_vision

    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required")
    out = Path(cfg.out)
    sft = SFTConfig(run_name="sft", storage=str(out), base=cfg.base, data=cfg.data, crop_scale=1.0,
                    boundary_width=cfg.boundary_width, instruction="short", freeze_vision=True, full=True,
                    uniform_keep=cfg.uniform_keep, lr=cfg.lr, batch_size=cfg.batch_size, max_steps=cfg.sft_steps,
                    warmup_steps=min(20, cfg.sft_steps), num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                    cpus_per_worker=cfg.cpus_per_worker, eval_every=cfg.eval_every,
                    checkpoint_every=cfg.checkpoint_every, val_patches=cfg.val_patches)
    check_config(sft)  # bad SFT settings fail before the pretraining's minutes are spent
    summary: dict = {"config": dataclasses.asdict(cfg)}
    done = out / "vision" / "vision_pretrain.json"
    if cfg.vision_steps and done.exists():  # a rerun resumes: the pretrained tower is kept
        summary["vision"] = json.loads((out / "metrics.json").read_text()).get("vision") if (
            out / "metrics.json").exists() else {"final": json.loads(done.read_text())["final"]}
        sft = dataclasses.replace(sft, base=str(out / "vision"))
    elif cfg.vision_steps:
        start = time.perf_counter()
        vision = pretrain_vision(VisionPretrainConfig(
            data=cfg.data, out=str(out / "vision"), base=cfg.base, crop_scale=1.0, sub_cells=4,
            boundary_width=cfg.boundary_width, steps=cfg.vision_steps, batch_size=cfg.vision_batch_size,
            lr=cfg.vision_lr, use_gpu=cfg.use_gpu, log_every=max(cfg.vision_steps // 10, 1)))
        summary["vision"] = {"final": vision["final"], "seconds": round(time.perf_counter() - start, 1)}
        write_atomic(out / "metrics.json", json.dumps(summary, indent=1))
        sft = dataclasses.replace(sft, base=str(out / "vision"))
    start = time.perf_counter()
    result = run_sft(sft)
    summary["sft"] = {"final": result["final"], "seconds": round(time.perf_counter() - start, 1)}
    shutil.copytree(out / "sft" / "model", out / "model", dirs_exist_ok=True)
    summary["model"] = str(out / "model")
    write_atomic(out / "metrics.json", json.dumps(summary, indent=1))
    return summary
