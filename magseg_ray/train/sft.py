"""LoRA supervised fine-tuning on Ray Train with DeepSpeed.

The driver (:func:`run_sft`) checks every input before a worker starts, builds the training
pipeline (:func:`magseg_ray.chips.pipeline.training_chips`: chip records in a seeded random order,
split by scene), keeps a few validation patches, and launches a ``TorchTrainer``. Each worker
(:func:`train_loop`) wraps the base model with LoRA, hands it to ``deepspeed.initialize`` (ZeRO
stage from the config; gloo on CPU, NCCL on GPU; bf16 where CUDA has it, else fp32; AdamW with
linear warmup and cosine decay), and trains on its shard of chip records, expanding each chip into
its patch instruction records and drawing batches at random from a buffer of several chips'
patches (``shuffle_patches``). The loss is the answer tokens' cross-entropy, by default averaged
per answer first (:func:`answer_loss`).

Every ``checkpoint_every`` steps all workers report a checkpoint: DeepSpeed's engine state (LoRA
weights, optimizer, scheduler; one file per rank), the adapter in PEFT format and the data
position. A failed worker restarts the group from the latest checkpoint (``max_failures``), and
rerunning the same command with the same ``run_name`` and ``storage`` resumes instead of
starting over (Ray Train restores the run's checkpoint list from storage). Data position is the
number of chips of the current epoch whose patches were all trained on (none left in the shuffle
buffer); a resumed worker skips them.

Every ``eval_every`` steps rank 0 answers the validation patches with constrained generation and
scores them (mean Dice over the classes present, field IoU). Outputs under ``storage/run_name``:
``adapter/`` (PEFT; not with ``full``), ``model/`` (a plain Gemma3 checkpoint with the adapter
merged in, what ``--model`` of the other jobs takes), ``metrics.json`` and ``curves.png``.

``full`` trains every weight instead: an offline preset starts from random weights, and LoRA on a
random decoder is a random-features model that learns little; a real Gemma3 checkpoint uses LoRA.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.files import local_absolute
from magseg_ray.progress import Progress, read_progress, write_progress
from magseg_ray.prompt import PromptConfig
from magseg_ray.train.driver import PROGRESS_FILE, RunConfig, chip_splits, run_name_field, save_outputs, write_summary


@dataclass(frozen=True)
class SFTConfig(RunConfig):
    """Settings of one SFT run (and those of every run, :class:`~magseg_ray.train.driver.RunConfig`)."""

    run_name: str = run_name_field("sft")
    base: str = field(default="small", metadata=doc("base model: a preset (tiny, small) or a Gemma3 checkpoint folder"))
    schema: str = field(default="fields3", metadata=doc("label schema of the answers", choices=["fields3", "ai4sf"]))
    patch_size: int = field(default=32, metadata=doc("patch side in pixels"))
    local_crop: bool = field(default=True, metadata=doc("show a crop around the patch after the shared prefix"))
    crop_scale: float = field(default=2.0, metadata=doc(
        "side of the local crop as a multiple of the patch side (1: the patch alone, at the image tokens' "
        "finest resolution; 2: the patch and half a patch of context around it)"))
    boundary_width: int = field(default=PromptConfig.boundary_width, metadata=doc(
        "half-width w in pixels of the boundary class in the answers: a field pixel is boundary when another "
        "field lies within w px, so a gap of g < w px between two fields becomes a line 2w - g px wide "
        "(6 turns the 2-4 px gaps between fields in aerial labels into lines of about 9 px)"))
    instruction: str = field(default=PromptConfig.instruction, metadata=doc(
        "instruction style: 'natural' states chip size, classes and answer syntax in words (about 100 tokens, "
        "for real Gemma3 checkpoints); 'short' is 'Segment' and the class codes (5 tokens: offline presets learn "
        "the task from scratch and pay for every prompt token in every step)", choices=["natural", "short"]))
    answer_format: str = field(default="rrle", metadata=doc(
        "mask text of the answers: 'rrle' (run lengths, N* repeats a line) or 'anchored' (each line opens with "
        "its first row, runs end at a column); recorded in the model's magseg.json", choices=["rrle", "anchored"]))
    val_patches: int = field(default=32, metadata=doc("validation patches scored every eval_every steps"))
    uniform_keep: float = field(default=1.0, metadata=doc(
        "share of single-class patches (answer '*f', '*b') kept for training; lower values make the model "
        "learn from patches with structure instead of the majority answer"))
    loss_mean: str = field(default="answer", metadata=doc(
        "how answer-token losses are averaged: 'answer' averages each answer's tokens, then the answers "
        "(every patch weighs the same, so the few codes that say which class a uniform patch is are not "
        "drowned by the long answers of boundary patches); 'token' averages all answer tokens of a batch",
        choices=["answer", "token"]))
    lora_r: int = field(default=16, metadata=doc("LoRA rank"))
    lora_alpha: int = field(default=32, metadata=doc("LoRA alpha"))
    train_projector: bool = field(default=False, metadata=doc(
        "also train the multimodal projector in full (for offline presets, whose projector starts random)"))
    train_vision: bool = field(default=False, metadata=doc(
        "also train the vision tower in full (for offline presets, whose SigLIP starts random)"))
    freeze_vision: bool = field(default=False, metadata=doc(
        "keep the vision tower and projector frozen (after dense vision pretraining) and compute each image's "
        "tokens once, without a backward pass, reusing them for every prompt and epoch that shows the image"))
    full: bool = field(default=False, metadata=doc(
        "train every weight instead of LoRA adapters (for offline presets, which start random: LoRA on "
        "a random decoder learns little); writes no adapter/"))
    zero_stage: int = field(default=2, metadata=doc("DeepSpeed ZeRO stage", choices=[0, 1, 2, 3]))
    lr: float = field(default=2e-4, metadata=doc("peak learning rate (AdamW)"))
    warmup_steps: int = field(default=20, metadata=doc(
        "steps of linear learning-rate warmup; then cosine decay to lr/10 at max_steps"))
    shuffle_patches: int = field(default=512, metadata=doc(
        "patches (from several chips) a worker holds and draws its batches from at random, so a batch "
        "is not one chip's look-alike patches; 0 takes them in arrival order (one chip's patches, shuffled)"))
    batch_size: int = field(default=8, metadata=doc("patches per worker per step"))
    pack: int = field(default=0, metadata=doc(
        "shared-prefix packing: draw batches pack patches of a chip at a time and train each chip's patches "
        "of a batch as one sequence, its image and instruction once (magseg_ray.train.packing); 0: off"))
    max_steps: int = field(default=200, metadata=doc("optimizer steps"))
    eval_every: int = field(default=50, metadata=doc("steps between validations (0: only at the end)"))
    checkpoint_every: int = field(default=50, metadata=doc("steps between checkpoints"))
    seed: int = field(default=0, metadata=doc("seed of the base preset, LoRA init and patch shuffling"))
    fail_once_at_step: int = field(default=-1, metadata=doc(
        "fault injection for tests: worker 1 exits once, 5 s after reaching this step (-1: never)"))

    def __post_init__(self):  # workers run elsewhere: ship local paths as absolute ones
        from magseg_ray.model.presets import PRESETS

        if self.base not in PRESETS:
            object.__setattr__(self, "base", local_absolute(self.base))
        object.__setattr__(self, "data", local_absolute(self.data))

    def model_prompt(self):
        """The prompt settings written next to every model this run saves (``magseg.json``)."""
        from magseg_ray.model.card import ModelPrompt

        return ModelPrompt(self.schema, self.patch_size, self.chip_size, self.local_crop, self.crop_scale,
                           self.boundary_width, self.instruction, self.answer_format)

    def load_base(self, device="cpu"):
        """The base model and processor: an offline preset (same seed, same weights on every worker)
        or a checkpoint folder, in ``dtype`` resolved for ``device``."""
        from magseg_ray.model.checkpoint import load_model, resolve_dtype
        from magseg_ray.model.presets import PRESETS, build_model

        if self.base in PRESETS:
            return build_model(self.base, seed=self.seed)
        return load_model(self.base, resolve_dtype(self.dtype, device))


def check_config(cfg: SFTConfig) -> None:
    """Fail before any worker starts on what can be checked on the driver."""
    from magseg_ray.model.checkpoint import check_checkpoint_dir
    from magseg_ray.model.presets import PRESETS
    from magseg_ray.model.card import check_model_prompt

    prompt = cfg.prompt()  # bad prompt settings (a negative crop scale, too wide a boundary) fail here
    if cfg.base not in PRESETS:
        check_checkpoint_dir(cfg.base)
        check_model_prompt(cfg.base, prompt)
    if not cfg.data:
        raise ConfigError("--data is required: a catalog, folder or prefix of labelled scenes")
    if cfg.chip_size % cfg.patch_size:
        raise ConfigError(f"chip_size {cfg.chip_size} is not a multiple of patch_size {cfg.patch_size}")
    if not 0 < cfg.uniform_keep <= 1:
        raise ConfigError(f"uniform_keep must lie in (0, 1], got {cfg.uniform_keep}")
    if cfg.checkpoint_every < 1 or cfg.max_steps < 1 or cfg.batch_size < 1:
        raise ConfigError("max_steps, batch_size and checkpoint_every must be >= 1")
    if cfg.warmup_steps < 0 or cfg.shuffle_patches < 0 or cfg.pack < 0:
        raise ConfigError("warmup_steps, shuffle_patches and pack must be >= 0")
    if cfg.freeze_vision and (cfg.train_vision or cfg.train_projector):
        raise ConfigError("--freeze-vision keeps the vision tower and projector fixed: drop --train-vision "
                          "and --train-projector")


def score_patches(model, processor, records: list[dict], prompt: PromptConfig,
                  settings=None) -> dict:
    """Constrained answers for ``records`` scored against their targets: mean Dice over classes
    present (per patch, then averaged) and field IoU over all patches. ``settings``: a
    :class:`~magseg_ray.model.generate.GenerationSettings` (default: greedy, full budget)."""
    from magseg_ray.eval.metrics import pixel_metrics
    from magseg_ray.masks.schemas import get_schema
    from magseg_ray.model.generate import GenerationSettings, answer_patches
    from magseg_ray.prompt import PatchPrompt
    from magseg_ray.rle import codec_for

    schema, decode = get_schema(prompt.schema), codec_for(prompt.answer_format).decode
    prompts = [PatchPrompt(list(r["images"]), r["prompt"], "", tuple(r["box"])) for r in records]
    answers = answer_patches(model, processor, prompts, prompt, settings or GenerationSettings())
    truths = [decode(r["target"], prompt.patch_size, prompt.patch_size, schema, strict=True)[0] for r in records]
    dice = [pixel_metrics(a.mask, t, schema)["mean"]["dice"] for a, t in zip(answers, truths)]
    pred_f = np.isin(np.stack([a.mask for a in answers]), schema.field_classes)
    true_f = np.isin(np.stack(truths), schema.field_classes)
    union = (pred_f | true_f).sum()
    return {"val_dice": float(np.nanmean(dice)), "val_field_iou": float((pred_f & true_f).sum() / union) if union else 1.0}


def model_inputs(batch: dict) -> dict:
    """A collated batch as model keyword arguments: cached image tokens (``image_features``, from
    :class:`~magseg_ray.train.features.ImageFeatureCache`) go in as the model's image encoder output."""
    if "image_features" not in batch:
        return batch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs = {k: v for k, v in batch.items() if k != "image_features"}
    inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=batch["image_features"])}
    return inputs


def answer_loss(model, batch: dict, mean: str = "answer"):
    """Cross-entropy on the answer tokens of a collated batch, averaged as ``mean`` says (see
    :attr:`SFTConfig.loss_mean`)."""
    import torch

    from magseg_ray.train.batches import IGNORE

    if "segment_ids" in batch:  # a packed batch
        from magseg_ray.train import packing

        return packing.answer_loss(model, batch, mean)
    batch = model_inputs(batch)
    if mean == "token":
        return model(**batch).loss
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1].float()
    target = batch["labels"][:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE,
                                                  reduction="none")
    return (per_token.sum(1) / (target != IGNORE).sum(1).clamp(min=1)).mean()


class _Worker:
    """One Ray Train worker of an SFT run: its engine, batches, state and reporting."""

    def __init__(self, cfg: SFTConfig, val_records: list[dict], fixed_batch: list[dict]):
        import ray.train
        import torch

        from magseg_ray.model.lora import LoraSettings, attach_lora
        from magseg_ray.train.engine import CheckpointState, deepspeed_engine, worker_device
        from magseg_ray.train.features import ImageFeatureCache

        self.cfg, self.val_records, self.fixed_batch = cfg, val_records, fixed_batch
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device, bf16 = worker_device(cfg.use_gpu, cfg.dtype)
        model, self.processor = cfg.load_base(self.device)
        torch.manual_seed(cfg.seed)
        self.cache = None
        if cfg.freeze_vision:
            model.model.vision_tower.requires_grad_(False)
            model.model.multi_modal_projector.requires_grad_(False)
            self.cache = ImageFeatureCache(model.to(self.device), self.processor, self.device)
        if not cfg.full:
            modules = ("multi_modal_projector",) * cfg.train_projector + ("vision_tower",) * cfg.train_vision
            model = attach_lora(model, LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha, train_modules=modules))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_factor, warmup=cfg.warmup_steps, total=cfg.max_steps))
        self.engine = deepspeed_engine(model, optimizer, cfg.batch_size, cfg.zero_stage, bf16, scheduler)
        self.run = CheckpointState(self.engine, self.rank, {"step": 0, "epoch": 0, "chips_done": 0, "history": [],
                                                            "restored_from_step": None})
        self.state = self.run.state
        self.losses: list[float] = []
        # throughput over training steps (batch making included), this process's first step excluded
        self.step_time, self.tokens, self.patches, self.steps_here = 0.0, 0, 0, 0

    def batch(self, records: list[dict]) -> dict:
        """Model inputs of ``records`` on the worker's device (cached image tokens when frozen)."""
        from magseg_ray.train.batches import collate, collate_text
        from magseg_ray.train.packing import pack

        if self.cfg.pack:
            batch = pack(self.processor, records, features=self.cache)
        elif self.cache is None:
            batch = collate(self.processor, records)
        else:
            batch = {**collate_text(self.processor, records), "image_features": self.cache(records)}
        return {k: v.to(self.device) for k, v in batch.items()}

    def fixed_loss(self) -> float:
        import torch

        self.engine.eval()
        with torch.no_grad():
            loss = answer_loss(self.engine, self.batch(self.fixed_batch), self.cfg.loss_mean).item()
        self.engine.train()
        return loss

    def train_step(self, records: list[dict]) -> float:
        """One optimizer step on ``records``; returns its loss."""
        start = time.perf_counter()
        batch = self.batch(records)
        loss = answer_loss(self.engine, batch, self.cfg.loss_mean)
        self.engine.backward(loss)
        self.engine.step()
        self.state["step"] += 1
        self.steps_here += 1
        if self.steps_here > 1:
            self.step_time += time.perf_counter() - start
            self.tokens += int(batch["attention_mask"].sum())
            self.patches += len(records)
        self.losses.append(loss.item())
        return self.losses[-1]

    def rates(self) -> dict:
        """All workers' training tokens and patches per second, from this rank's (batches are the
        same size on every rank)."""
        if not self.step_time:
            return {"tokens_per_s": None, "patches_per_s": None}
        return {"tokens_per_s": self.tokens * self.world / self.step_time,
                "patches_per_s": self.patches * self.world / self.step_time}

    def save_rank0(self, folder: Path) -> None:
        from magseg_ray.model.card import write_model_prompt
        from magseg_ray.model.checkpoint import save_model

        if self.cfg.full:  # a checkpoint's model maps as it is
            save_model(self.engine.module, self.processor, folder / "model")
            write_model_prompt(folder / "model", self.cfg.model_prompt())
        else:
            self.engine.module.save_pretrained(folder / "adapter")

    def all_ranks(self, ready: bool) -> bool:
        """``ready`` on every rank. Workers step together (their gradients are all-reduced), and the
        shards are one stream split in step: a rank whose shuffle buffer filled first and stepped alone
        would wait for the others' gradients while they waited for it to read (seen: README's sft
        example, 2 workers, default 512-patch buffer, blocked in epoch 0 for 10 minutes)."""
        import torch
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            return ready
        flag = torch.tensor([int(ready)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def after_step(self, loss: float, chip_index: int, buffer: list[dict]) -> None:
        """Progress line, fault injection, validation and checkpoint as the step number asks."""
        cfg, step = self.cfg, self.state["step"]
        if self.rank == 0:
            rates = self.rates()
            write_progress(cfg.run_dir / PROGRESS_FILE, step, f"epoch {self.state['epoch']}, loss {loss:.4f}, "
                           f"lr {self.engine.get_lr()[0]:.2e}, {rates['tokens_per_s'] or 0:.0f} tokens/s")
        if step == cfg.fail_once_at_step and self.rank == 1:
            marker = cfg.run_dir / f".failed_at_{step}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                time.sleep(5)  # let the controller register the last reported checkpoint
                os._exit(1)  # a worker dies mid-run: Ray Train restarts from the checkpoint
        evaluate = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
        save = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        if not (evaluate or save):
            return
        extra = {"loss": float(np.mean(self.losses)), **self.rates(),
                 "restored_from_step": self.state["restored_from_step"]}
        if evaluate:
            extra["fixed_batch_loss"] = self.fixed_loss()
            if self.rank == 0 and self.val_records:
                self.engine.eval()
                extra.update(score_patches(self.engine.module, self.processor, self.val_records, self.cfg.prompt()))
                self.engine.train()
        self.losses.clear()
        if save:  # chips with patches still in the buffer are redone on resume
            self.state["chips_done"] = min((r["chip_index"] for r in buffer), default=chip_index)
        self.run.report({"step": step, "epoch": self.state["epoch"], **extra}, save, self.save_rank0)


def train_loop(loop_config: dict) -> None:
    """Ray Train worker: DeepSpeed SFT on this worker's shard of chip records (see module doc)."""
    import ray.train

    from magseg_ray.chips.pipeline import patch_records
    from magseg_ray.prompt import single_class
    from magseg_ray.train.packing import draw

    cfg = SFTConfig(**loop_config["config"])
    worker = _Worker(cfg, loop_config["val"], loop_config["fixed_batch"])
    state, prompt = worker.state, cfg.prompt()
    if state["step"] == 0:
        worker.run.report({"step": 0, "epoch": 0, "fixed_batch_loss": worker.fixed_loss()}, save=False)
    rng = random.Random(cfg.seed * 1000 + worker.rank)
    shard = ray.train.get_dataset_shard("train")
    buffer: list[dict] = []
    while state["step"] < cfg.max_steps:
        seen_patches = 0
        for i, chip in enumerate(shard.iter_rows()):
            if i < state["chips_done"]:
                continue
            records = [{**r, "chip_index": i} for r in patch_records(chip, prompt)
                       if cfg.uniform_keep >= 1 or not single_class(r["target"]) or rng.random() < cfg.uniform_keep]
            seen_patches += len(records)
            rng.shuffle(records)
            buffer.extend(records)
            while state["step"] < cfg.max_steps and worker.all_ranks(len(buffer) >= max(cfg.batch_size, cfg.shuffle_patches)):
                picked = draw(buffer, rng, cfg.batch_size, cfg.pack) if cfg.pack else \
                    [buffer.pop(rng.randrange(len(buffer)) if cfg.shuffle_patches else 0) for _ in range(cfg.batch_size)]
                worker.after_step(worker.train_step(picked), i, buffer)
            if state["step"] >= cfg.max_steps:
                break
        else:
            if seen_patches == 0 and state["chips_done"] == 0:
                raise ConfigError(f"worker {worker.rank} got no training patches: the training split is too "
                                  f"small for {cfg.num_workers} workers")
            state["epoch"] += 1
            state["chips_done"] = 0
            for r in buffer:  # leftovers carry into the next epoch, counted as its first chip's
                r["chip_index"] = 0


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warmup over ``warmup`` steps, then
    cosine decay from 1 to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def run_sft(cfg: SFTConfig) -> dict:
    """Run SFT on the current Ray cluster; return the final metrics (also in ``metrics.json``)."""
    from magseg_ray.chips.pipeline import patch_records, validation_patches
    from magseg_ray.train.engine import torch_trainer

    check_config(cfg)
    prompt = cfg.prompt()
    chips = chip_splits(cfg, prompt)
    train = chips("train")
    val = []
    if cfg.val_patches:
        val = validation_patches(chips("val"), cfg.val_patches, prompt)
    fixed_batch = [r for c in train.take(8) if c["error"] is None for r in patch_records(c, prompt)][: cfg.batch_size]
    if not fixed_batch:
        raise ConfigError(f"no readable training patches in the first chips of {cfg.data!r}")

    trainer = torch_trainer(train_loop, {"config": dataclasses.asdict(cfg), "val": val, "fixed_batch": fixed_batch},
                            cfg, datasets={"train": train})
    progress = partial(read_progress, cfg.run_dir / PROGRESS_FILE)
    with Progress("[sft] steps", total=cfg.max_steps, unit="steps", poll=progress):
        result = trainer.fit()
    history = save_outputs(cfg, result)["history"]
    return write_summary(cfg, {"final": history[-1], "history": history, "val_patches": len(val)},
                         ["loss", "fixed_batch_loss", "val_dice", "val_field_iou", "patches_per_s"],
                         f"SFT {cfg.run_name} ({cfg.base}, {cfg.num_workers} workers, ZeRO-{cfg.zero_stage})")
