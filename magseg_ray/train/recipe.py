"""The demo model's recipe in one process: dense vision pretraining, then SFT with the tower frozen.

Made for a short GPU lease (one command, minutes, a machine with PyTorch and transformers only) and
the same code on a CPU with fewer steps. It reads scenes packed by
:func:`~magseg_ray.train.demo_data.pack_scenes` and, on the GPU when there is one (bf16 autocast):

1. :func:`~magseg_ray.train.vision.train_tower` (skipped with ``vision_steps`` 0): the tower and
   projector learn every crop pixel's class (``crop_scale`` 1, ``sub_cells`` 4) at the answers'
   boundary width, and each token its place;
2. SFT with the tower frozen: each step draws ``batch_size`` patches from random chips of random
   training scenes, turned and mirrored at random (``augment``; single-class patches kept with
   probability ``uniform_keep``), computes their image tokens without a gradient, and trains every
   decoder weight on the answers (loss averaged per answer, AdamW, warmup and cosine decay,
   gradients clipped at 1). The short instruction.

Every ``eval_every`` steps the model answers fixed validation patches (constrained decoding, mean
Dice and field IoU) and is saved to ``out/model`` with ``metrics.json`` (``"status": "partial"``
until the last step), so a stopped run keeps its latest model; rerunning the command continues from
that model at the saved step (the learning-rate schedule resumes; the optimizer state starts anew).
With ``minutes`` set (a lease of fixed length) the run times its warmup steps and fixes the schedule
length so that it ends within the budget; a rerun keeps that plan.
It is the Ray Train + DeepSpeed SFT job's recipe (``jobs/sft.py --freeze-vision --instruction short
--full``) without the cluster; that job is the one to scale out.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from magseg_ray.progress import Progress

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.files import write_atomic
from magseg_ray.model.checkpoint import DEMO_MODEL


@dataclass(frozen=True)
class RecipeConfig:
    """Settings of one run of the demo model's recipe."""

    data: str = field(default="", metadata=doc("packed scene folder (see `train_demo.py pack`)"))
    out: str = field(default="", metadata=doc("folder for the run: model/, metrics.json, curves"))
    base: str = field(default=str(DEMO_MODEL), metadata=doc(
        "model to start from: the shipped demo model (training carries over between days), a checkpoint "
        "folder or an offline preset (tiny, small)"))
    vision_steps: int = field(default=1000, metadata=doc("dense vision pretraining steps (0: keep the base's tower)"))
    vision_batch_size: int = field(default=32, metadata=doc("patch prompts per vision pretraining step"))
    vision_lr: float = field(default=5e-4, metadata=doc("peak learning rate of vision pretraining"))
    sft_steps: int = field(default=1000, metadata=doc("SFT optimizer steps (at most; see minutes)"))
    minutes: float = field(default=0.0, metadata=doc(
        "wall-clock budget of the SFT stage in minutes (0: none): after the warmup steps the run times its "
        "steps and shortens the schedule (never beyond sft_steps) so that the cosine decay ends within the "
        "budget, a tenth kept for validation; the step count it chose is metrics.json's planned_steps"))
    batch_size: int = field(default=32, metadata=doc("SFT patches per step"))
    lr: float = field(default=3e-4, metadata=doc("peak SFT learning rate"))
    warmup_steps: int = field(default=20, metadata=doc("SFT steps of linear warmup, then cosine decay to lr/10"))
    boundary_width: int = field(default=6, metadata=doc("boundary half-width of the answers (see jobs/sft.py)"))
    answer_format: str = field(default="rrle", metadata=doc(
        "mask text of the answers: 'rrle' or 'anchored' (see jobs/sft.py); a base that writes another format "
        "relearns its answers", choices=["rrle", "anchored"]))
    augment: bool = field(default=True, metadata=doc(
        "turn and mirror training chips at random in both stages (see jobs/pretrain_vision.py)"))
    uniform_keep: float = field(default=0.2, metadata=doc("share of single-class patches kept (see jobs/sft.py)"))
    eval_every: int = field(default=200, metadata=doc("SFT steps between validation and saving the model"))
    val_patches: int = field(default=128, metadata=doc("fixed validation patches scored at each validation"))
    log_every: int = field(default=20, metadata=doc("SFT steps the progress line's loss is the mean of"))
    seed: int = field(default=0, metadata=doc("seed of the sampled windows and patches"))

    def prompt(self):
        return self.card().prompt()

    def card(self):
        from magseg_ray.model.card import ModelPrompt

        # fields grow from cores half a patch deep: a boundary the decoder missed in one patch still separates
        return ModelPrompt(patch_size=32, chip_size=256, crop_scale=1.0, boundary_width=self.boundary_width,
                           instruction="short", answer_format=self.answer_format, field_seed_px=32 / 2)


def _records(sampler, rng: np.random.Generator, n: int, prompt, keep: float) -> list[dict]:
    """``n`` patch records from random windows; single-class patches kept with probability ``keep``."""
    from magseg_ray.prompt import build_patch_prompt, single_class

    out: list[dict] = []
    while len(out) < n:
        chip, classes, box = sampler.window(rng)
        p = build_patch_prompt(chip, box, prompt, labels=classes)
        if not single_class(p.target) or rng.random() < keep:
            out.append({"images": p.images, "prompt": p.text, "target": p.target, "box": box})
    return out


class _SFT:
    """The frozen-tower SFT stage: model, optimizer, batches and steps."""

    def __init__(self, model, processor, cfg: RecipeConfig, device, first_step: int, total: int):
        import torch

        from magseg_ray.train.sft import lr_factor

        self.model, self.processor, self.cfg, self.device = model, processor, cfg, device
        model.model.vision_tower.requires_grad_(False)
        model.model.multi_modal_projector.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr)
        self.total = total
        """Steps of the schedule: ``sft_steps``, or fewer once :func:`_plan` has timed the warmup."""
        # a resumed run picks the schedule up where it stopped
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s + first_step, cfg.warmup_steps, self.total))
        self.params = params

    def step(self, records: list[dict]) -> float:
        import torch

        from magseg_ray.train.batches import collate_text
        from magseg_ray.train.sft import answer_loss

        batch = {k: v.to(self.device) for k, v in collate_text(self.processor, records).items()}
        pixels = self.processor.image_processor([i for r in records for i in r["images"]],
                                                return_tensors="pt")["pixel_values"].to(self.device)
        cuda = self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda):
            with torch.no_grad():
                batch["image_features"] = self.model.get_image_features(pixels).pooler_output
            loss = answer_loss(self.model, batch)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.schedule.step()
        return loss.item()


def _plan(cfg: RecipeConfig, step: int, first: int, seconds: float) -> int:
    """Schedule length that ends SFT within ``cfg.minutes``, from ``seconds`` taken by steps
    ``first+1..step`` (90 % of the budget for steps, the rest for validation and saving)."""
    per_step = seconds / max(step - first, 1)
    left = 0.9 * cfg.minutes * 60 - seconds
    return int(min(cfg.sft_steps, max(step, step + left // per_step)))


def _start(cfg: RecipeConfig, out: Path):
    """Model, processor and the SFT step to start at: a partial run's saved model, else the base."""
    from magseg_ray.model.checkpoint import load_model
    from magseg_ray.model.presets import PRESETS, build_model

    metrics = out / "metrics.json"
    if (out / "model").is_dir() and metrics.is_file():
        state = json.loads(metrics.read_text())
        return (*load_model(out / "model"), state)
    model, processor = build_model(cfg.base, seed=cfg.seed) if cfg.base in PRESETS else load_model(cfg.base)
    return model, processor, {"status": "partial", "config": dataclasses.asdict(cfg), "vision": None, "history": []}


def _save(model, processor, cfg: RecipeConfig, out: Path, state: dict) -> None:
    """The model in bfloat16 (as the shipped demo model: 16 MB for ``small``, small enough to bring
    back from a lent machine), its card, and the run's state."""
    import copy

    import torch

    from magseg_ray.model.card import write_model_prompt
    from magseg_ray.model.checkpoint import save_model

    save_model(copy.deepcopy(model).to(torch.bfloat16), processor, out / "model")
    write_model_prompt(out / "model", cfg.card())
    write_atomic(out / "metrics.json", json.dumps(state, indent=1))


def run_recipe(cfg: RecipeConfig) -> dict:
    """Run the recipe (see module doc); return the summary written to ``out/metrics.json``."""
    import torch

    from magseg_ray.train.curves import plot_curves
    from magseg_ray.train.demo_data import unpack_scenes
    from magseg_ray.train.sft import score_patches
    from magseg_ray.train.vision import VisionPretrainConfig, samplers, train_tower

    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required")
    if min(cfg.sft_steps, cfg.batch_size, cfg.eval_every) < 1 or cfg.vision_steps < 0:
        raise ConfigError("sft_steps, batch_size and eval_every must be >= 1, vision_steps >= 0")
    out = Path(cfg.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scenes = unpack_scenes(cfg.data, cfg.boundary_width)
    model, processor, state = _start(cfg, out)
    model = model.to(device)
    vision = VisionPretrainConfig(crop_scale=1.0, sub_cells=4, boundary_width=cfg.boundary_width,
                                  steps=cfg.vision_steps, batch_size=cfg.vision_batch_size, lr=cfg.vision_lr,
                                  log_every=max(cfg.vision_steps // 10, 1), seed=cfg.seed,
                                  augment=cfg.augment)
    train, val = samplers(model, vision, scenes["train"], scenes["val"])
    if cfg.vision_steps and state["vision"] is None:
        start = time.perf_counter()
        history, majority = train_tower(model, processor, train, val, vision, device)
        state["vision"] = {"final": history[-1], "majority": majority, "seconds": round(time.perf_counter() - start, 1)}
    first = state["history"][-1]["step"] if state["history"] else 0
    sft = _SFT(model, processor, cfg, device, first, state.get("planned_steps", cfg.sft_steps))
    prompt = cfg.prompt()
    val_records = _records(val, np.random.default_rng(10**6), cfg.val_patches, prompt, 1.0)
    rng, losses, start = np.random.default_rng([cfg.seed, first]), [], time.perf_counter()
    step = first
    with Progress(f"[recipe] SFT steps after {first}", total=sft.total - first, unit="steps") as progress:
        while step < sft.total:
            step += 1
            model.train()
            losses.append(sft.step(_records(train, rng, cfg.batch_size, prompt, cfg.uniform_keep)))
            if cfg.minutes and step == max(cfg.warmup_steps, 1) + first and "planned_steps" not in state:
                state["planned_steps"] = sft.total = _plan(cfg, step, first, time.perf_counter() - start)
                print(f"[recipe] {cfg.minutes:g} min budget: {sft.total} SFT steps", flush=True)
            progress.total = sft.total - first
            progress.update(step - first, f"loss {np.mean(losses[-cfg.log_every:]):.4f}")
            if step % cfg.eval_every == 0 or step == sft.total:
                model.eval()
                row = {"step": step, "loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - start, 1),
                       "patches_per_s": (step - first) * cfg.batch_size / (time.perf_counter() - start),
                       **score_patches(model, processor, val_records, prompt)}
                losses.clear()
                state["history"].append(row)
                state["status"] = "complete" if step == sft.total else "partial"
                _save(model, processor, cfg, out, state)
    plot_curves(state["history"], ["loss", "val_dice", "val_field_iou"], out / "curves.png",
                f"Demo recipe ({Path(cfg.base).name}, {sft.total} SFT steps, batch {cfg.batch_size})")
    return state
