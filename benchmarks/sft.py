"""SFT training throughput: Ray Train + DeepSpeed against a plain loop, and the old recipe against the new.

    python benchmarks/sft.py [--base small] [--steps 12] [--batch-size 4]

Both paths train the same LoRA-wrapped model (same preset and seed) on patch records of the same
chips (the repo's naip sample, 256 px chips). The named baseline, ``plain_torch_loop``, is one
process with AdamW on batches collated up front (no data pipeline, no distribution); the Ray path
is ``jobs/sft.py``'s ``run_sft`` on a local Ray with 2 CPU workers, ZeRO-2, data streamed by Ray
Data. Throughput counts non-padding tokens of all workers per second of training steps, the first
step excluded. Prints one JSON line; ``ratio`` = Ray path / baseline.

The same line compares the demo model's recipes by training patches per second (batch making
included), both full-weight runs on the Ray path: ``old_recipe`` (the natural-language instruction,
vision tower trained, images through the processor every step) against ``new_recipe`` (short
instruction, tower frozen, image tokens from the cache); ``recipe_ratio`` = new / old. A short run
sees every image once, so the cache only saves the tower's backward pass and the chip's repeats
here; later epochs hit it for every image.

    python benchmarks/sft.py --packing [--pack 4] [--pack-4b 16] [--steps 12] [--batch-size 16] [--threads N]

prints another line instead: shared-prefix packing (:mod:`magseg_ray.train.packing`) against the
unpacked batch (``baseline`` ``unpacked``). Training patches per second of the demo model's recipe
(its prompt settings from ``magseg.json``, every weight trained, tower frozen with cached image
tokens), one process, the same batches both ways (``batch_size`` patches drawn ``pack`` of a chip at
a time, as ``--pack`` makes SFT draw them), the two loops alternating twice, each one's first step
excluded: batch making, forward, backward and AdamW step; ``ratio`` = packed / unpacked (the packed
step runs each chip's prefix once, then its patches over the prefix's keys and values), by wall
clock, and ``cpu_ratio`` the same by this process's CPU seconds (steadier on a shared machine:
another process's load slows whichever arm it falls on). And the
tokens per example at the Gemma3-4B layout (896 px chip, 256 image tokens, no local crop, the worded
instruction, the project tokenizer), non-padding tokens of all patches of one naip chip, packed
``pack_4b`` at a time; ``token_ratio`` = unpacked / packed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from magseg_ray.chips.pipeline import patch_records, training_chips
from magseg_ray.chips.windows import ChipConfig
from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.model.lora import LoraSettings, attach_lora
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.train.batches import collate, collate_text
from magseg_ray.train.sft import SFTConfig, run_sft

ROOT = Path(__file__).resolve().parents[1]


def plain_loop(cfg: SFTConfig, records: list[dict]) -> float:
    """Tokens per second of a single-process LoRA training loop (first step excluded)."""
    model, processor = cfg.load_base()
    torch.manual_seed(cfg.seed)
    model = attach_lora(model, LoraSettings(r=cfg.lora_r, alpha=cfg.lora_alpha))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    batches = [collate(processor, records[i : i + cfg.batch_size])
               for i in range(0, cfg.batch_size * cfg.max_steps, cfg.batch_size)]
    model.train()
    tokens, t0 = 0, 0.0
    for i, batch in enumerate(batches):
        if i == 1:
            tokens, t0 = 0, time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0)


def _step_seconds(model, optimizer, make_batch, batches: list[list[dict]]) -> tuple[float, float]:
    """Seconds and this process's CPU seconds of training steps on ``batches`` (batch making
    included), the first excluded."""
    from magseg_ray.train.sft import answer_loss

    seconds = cpu = 0.0
    for i, records in enumerate(batches):
        start, start_cpu = time.perf_counter(), time.process_time()
        answer_loss(model, make_batch(records)).backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds += (time.perf_counter() - start) * (i > 0)
        cpu += (time.process_time() - start_cpu) * (i > 0)
    return seconds, cpu


def packing_rates(records: list[dict], steps: int, batch_size: int, pack: int) -> dict:
    """Training patches per second of the demo model, unpacked and packed (see module doc)."""
    import random

    from magseg_ray.model.checkpoint import DEMO_MODEL, load_model
    from magseg_ray.train import packing
    from magseg_ray.train.features import ImageFeatureCache

    model, processor = load_model(DEMO_MODEL)
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    cache = ImageFeatureCache(model, processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    rng, buffer = random.Random(0), list(records)
    batches = [packing.draw(buffer, rng, batch_size, pack) for _ in range(steps)]
    ways = {"unpacked": lambda rs: {**collate_text(processor, rs), "image_features": cache(rs)},
            "packed": lambda rs: packing.pack(processor, rs, features=cache)}
    seconds = {(way, clock): 0.0 for way in ways for clock in ("wall", "cpu")}
    for _ in range(2):
        for way, make in ways.items():
            wall, cpu = _step_seconds(model, optimizer, make, batches)
            seconds[way, "wall"] += wall
            seconds[way, "cpu"] += cpu
    return {f"{way}_{clock}": 2 * (steps - 1) * batch_size / s for (way, clock), s in seconds.items()}


def tokens_4b(data: str, pack: int) -> dict:
    """Non-padding tokens per example at the Gemma3-4B layout, unpacked and packed (see module doc)."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    from magseg_ray.model.presets import build_model
    from magseg_ray.prompt import PromptConfig
    from magseg_ray.train import packing

    _, tiny = build_model("tiny")
    processor = Gemma3Processor(Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                                        image_std=[0.5] * 3), tiny.tokenizer, image_seq_length=256)
    prompt = PromptConfig(local_crop=False)
    chip = training_chips(load_catalog(data).scenes, None, ChipConfig(896, 0), prompt, val_fraction=0.0).take(1)[0]
    records = patch_records(chip, prompt)
    unpacked = sum(int(collate_text(processor, records[i:i + 64])["attention_mask"].sum())
                   for i in range(0, len(records), 64))
    packed = sum(int(packing.pack(processor, records[i:i + pack])["attention_mask"].sum())
                 for i in range(0, len(records), pack))
    return {"patches": len(records), "unpacked": unpacked / len(records), "packed": packed / len(records)}


def packing_line(data: str, args) -> dict:
    """The packing benchmark's JSON line (see module doc)."""
    from magseg_ray.model.card import read_model_prompt
    from magseg_ray.model.checkpoint import DEMO_MODEL

    prompt = read_model_prompt(DEMO_MODEL).prompt()
    load = os.getloadavg()[0]
    with ray_session(RaySettings(num_cpus=2)):
        chips = training_chips(load_catalog(data).scenes, None, ChipConfig(256, 0), prompt, val_fraction=0.0).take(8)
        records = [r for c in chips for r in patch_records(c, prompt)]
        tokens = tokens_4b(data, args.pack_4b)
    rates = packing_rates(records, args.steps, args.batch_size, args.pack)
    return {"benchmark": "sft_packing", "baseline": "unpacked", "model": "demo_model", "steps": args.steps,
            "batch_size": args.batch_size, "pack": args.pack, "threads": torch.get_num_threads(),
            "unpacked_patches_per_s": round(rates["unpacked_wall"], 2),
            "packed_patches_per_s": round(rates["packed_wall"], 2),
            "ratio": round(rates["packed_wall"] / rates["unpacked_wall"], 2),
            "unpacked_patches_per_cpu_s": round(rates["unpacked_cpu"], 2),
            "packed_patches_per_cpu_s": round(rates["packed_cpu"], 2),
            "cpu_ratio": round(rates["packed_cpu"] / rates["unpacked_cpu"], 2), "load_avg_1m_at_start": load,
            "gemma3_4b_patches": tokens["patches"], "pack_4b": args.pack_4b,
            "gemma3_4b_unpacked_tokens_per_example": round(tokens["unpacked"], 1),
            "gemma3_4b_packed_tokens_per_example": round(tokens["packed"], 1),
            "token_ratio": round(tokens["unpacked"] / tokens["packed"], 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="small", help="preset or checkpoint folder (default small)")
    p.add_argument("--steps", type=int, default=12, help="training steps per path (default 12)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per worker per step (default 4; 16 "
                   "with --packing)")
    p.add_argument("--packing", action="store_true", help="the packing line instead (see module doc)")
    p.add_argument("--pack", type=int, default=4, help="patches of a chip per packed row (default 4)")
    p.add_argument("--pack-4b", type=int, default=16, help="the same at the Gemma3-4B layout (default 16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default torch's); 1 on a shared machine, "
                   "where a thread descheduled at each parallel op's barrier stalls the step")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = str(ROOT / "tests" / "data" / "naip")
    if args.packing:
        args.batch_size = args.batch_size or 16
        result = packing_line(data, args)
        print(json.dumps(result))
        return result
    args.batch_size = args.batch_size or 4
    with tempfile.TemporaryDirectory() as tmp, ray_session(RaySettings(num_cpus=2)):
        cfg = SFTConfig(run_name="bench", storage=tmp, base=args.base, data=data, val_fraction=0.0,
                        val_patches=0, num_workers=2, cpus_per_worker=0.5, batch_size=args.batch_size,
                        max_steps=args.steps, eval_every=0, checkpoint_every=args.steps)
        chips = training_chips(load_catalog(data).scenes, None, ChipConfig(cfg.chip_size, 0), cfg.prompt(),
                               val_fraction=0.0).take(8)
        records = [r for c in chips for r in patch_records(c, cfg.prompt())]
        baseline = plain_loop(cfg, records)
        summary = run_sft(cfg)
        recipe = {"crop_scale": 1.0, "full": True, "boundary_width": 6}
        old = run_sft(dataclasses.replace(cfg, run_name="old", **recipe))["final"]["patches_per_s"]
        new = run_sft(dataclasses.replace(cfg, run_name="new", instruction="short", freeze_vision=True,
                                          **recipe))["final"]["patches_per_s"]
    ray_tps = summary["final"]["tokens_per_s"]
    result = {"benchmark": "sft", "baseline": "plain_torch_loop", "base": args.base, "steps": args.steps,
              "batch_size_per_worker": args.batch_size, "workers": 2, "zero_stage": 2,
              "baseline_tokens_per_s": round(baseline, 1), "ray_deepspeed_tokens_per_s": round(ray_tps, 1),
              "ratio": round(ray_tps / baseline, 3), "old_recipe_patches_per_s": round(old, 2),
              "new_recipe_patches_per_s": round(new, 2), "recipe_ratio": round(new / old, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
