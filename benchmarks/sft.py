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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from magseg_ray.chips.pipeline import patch_records, training_chips
from magseg_ray.chips.windows import ChipConfig
from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.model.lora import LoraSettings, attach_lora
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.train.batches import collate
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="small", help="preset or checkpoint folder (default small)")
    p.add_argument("--steps", type=int, default=12, help="training steps per path (default 12)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per worker per step (default 4)")
    args = p.parse_args(argv)
    data = str(ROOT / "tests" / "data" / "naip")
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
