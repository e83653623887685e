"""Gemma3 4B at real size on the CPU: load, map a share of one 512 px chip, LoRA SFT steps.

    python benchmarks/real_size.py [--folder /tmp/gemma3-4b] [--patches 4] [--max-new-tokens 16]
                                   [--sft-steps 2] [--append cluster/benchmarks.jsonl]

Random weights in bf16, nothing downloaded: the folder is written by ``tests/hub/gemma3.py`` with
``google/gemma-3-4b-it``'s widths, token ids, vocabulary and processor settings (896 px, 256 image
tokens) and a Gemma-kind tokenizer (every digit its own token), once, then reused. The mapping
layout is the scale plan's: the 512 px chip is the only image (no local crop), the natural
instruction. Measured:

- ``load_s``: :func:`~magseg_ray.model.checkpoint.load_model` in bf16 (the folder's build time
  apart, ``build_s``); ``peak_rss_gb`` of this process (the SFT run's worker is another process);
- ``prefill_tokens_per_chip`` (text + image tokens of the shared prefix), ``suffix_tokens_per_patch``
  (mean over the chip's 256 patches), ``answer_tokens_per_patch`` (the chip's true masks as R-RLE in
  this tokenizer, + end of turn: what a trained model would write), ``kv_bytes_per_token`` (from the
  prefix's cache) and ``kv_bytes_per_patch`` (suffix + answer tokens);
- ``prefill_s`` (the prefix through the model once), then ``--patches`` patches decoded by
  :func:`~magseg_ray.model.batching.answer_chips`: random weights write arbitrary valid answers, so
  the line reports the answer tokens seen and ``s_per_decoded_token`` (at a batch of ``--patches``);
  ``s_per_chip_estimate`` = prefill + 256 patches x ``answer_tokens_per_patch`` at that cost;
- ``lora_sync_bytes``: the LoRA weights a GRPO learner ships to each rollout actor per update
  (GRPO's default rank 16), counted on the 4B;
- ``sft_s_per_step``: ``run_sft`` under Ray Train + DeepSpeed (1 CPU worker, bf16, batch 1), the
  first step excluded as the job's own rate does; ``sft_wall_s`` includes loading, Ray Data and
  the merged model's export.

Not part of CI (minutes, ~10 GB). A GRPO step holds two copies (learner + rollout actor, ~17 GB of
weights); on a 24 GB machine with anything else running they do not fit, so the learner's cost is
the SFT step's and the actor's the decode cost above.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/hub/gemma3.py writes the folder

from magseg_ray.cluster import RaySettings, ray_session  # noqa: E402
from magseg_ray.model.batching import answer_chips  # noqa: E402
from magseg_ray.model.checkpoint import load_model  # noqa: E402
from magseg_ray.model.generate import GenerationSettings  # noqa: E402
from magseg_ray.prompt import END_OF_TURN, PromptConfig, build_patch_prompt, patch_boxes  # noqa: E402
from tests.hub.gemma3 import make_gemma3  # noqa: E402

LAYOUT = PromptConfig(local_crop=False, instruction="natural")
CHIP = 512


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def labelled_chip() -> tuple[np.ndarray, np.ndarray]:
    """A 512 px chip of the repo's naip sample and its fields3 classes."""
    from magseg_ray.chips.pipeline import chip_image, training_chips
    from magseg_ray.chips.windows import ChipConfig
    from magseg_ray.masks.schemas import NO_DATA
    from magseg_ray.scenes.catalog import load_catalog
    from magseg_ray.scenes.store import ObjectStore

    store = ObjectStore.from_env()
    scenes = load_catalog(str(ROOT / "tests/data/naip"), store).scenes
    for c in training_chips(scenes, None, ChipConfig(CHIP, 0), LAYOUT, store=store, val_fraction=0.0,
                            split="train").iter_rows():
        if c["error"] is None:
            image = chip_image(c)
            classes = np.asarray(c["classes"]).reshape(image.shape[:2])
            if classes.shape == (CHIP, CHIP) and (classes == 1).any() and (classes != NO_DATA).all():
                return image, classes
    raise SystemExit("no fully valid 512 px chip with fields in tests/data/naip")


def layout(processor, chip, labels) -> dict:
    """Token counts of the chip's prompts and true answers in this tokenizer."""
    tok = processor.tokenizer
    prompts = [build_patch_prompt(chip, b, LAYOUT, labels) for b in patch_boxes(CHIP, CHIP, 32)]
    prefix = processor(text=[prompts[0].prefix], images=[[chip]], add_special_tokens=False)["input_ids"][0]
    suffix = [len(tok(p.text[len(p.prefix):], add_special_tokens=False)["input_ids"]) for p in prompts]
    answers = [len(tok(p.target + END_OF_TURN, add_special_tokens=False)["input_ids"]) for p in prompts]
    image = len(tok(processor.full_image_sequence, add_special_tokens=False)["input_ids"])  # with its markers
    return {"prefill_tokens_per_chip": len(prefix), "image_tokens_per_image": image,
            "suffix_tokens_per_patch": float(np.mean(suffix)), "answer_tokens_per_patch": float(np.mean(answers)),
            "answer_tokens_p95": float(np.percentile(answers, 95)), "answer_chars_per_patch":
            float(np.mean([len(p.target) for p in prompts]))}


def mapping(model, processor, chip, n: int, max_new_tokens: int) -> dict:
    """Prefill once, then ``n`` patches decoded as the mapping actor does."""
    pre = processor(text=[build_patch_prompt(chip, (0, 0, 32, 32), LAYOUT).prefix], images=[[chip]],
                    return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    with torch.no_grad():
        cache = model(**pre, use_cache=True, logits_to_keep=1).past_key_values
    prefill_s = time.perf_counter() - start
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    settings = GenerationSettings(batch_size=n, max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    answers = answer_chips(model, processor, [(chip, patch_boxes(CHIP, CHIP, 32)[:n])], LAYOUT, settings)[0]
    decode_s = time.perf_counter() - start - prefill_s
    tokens = sum(len(processor.tokenizer(a.text, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    return {"prefill_s": round(prefill_s, 2), "kv_bytes_per_token": kv // pre["input_ids"].shape[1],
            "patches_decoded": n, "answer_tokens_seen": tokens, "decode_s": round(decode_s, 2),
            "s_per_decoded_token": round(decode_s / tokens, 3)}


def lora_sync_bytes(model) -> int:
    from peft import get_peft_model_state_dict

    from magseg_ray.model.lora import attach_lora
    from magseg_ray.train.grpo import GRPOConfig

    peft = attach_lora(model, GRPOConfig(model=".").lora())
    return sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(peft).values())


def sft(folder: Path, steps: int) -> dict:
    from magseg_ray.train.sft import SFTConfig, run_sft

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(base=str(folder), data=str(ROOT / "tests/data/naip"), storage=tmp, chip_size=CHIP,
                        local_crop=False, instruction="natural", num_workers=1, cpus_per_worker=2, batch_size=1,
                        max_steps=steps, val_patches=0, eval_every=0, checkpoint_every=steps,
                        warmup_steps=0, shuffle_patches=8, dtype="bfloat16")
        start = time.perf_counter()
        metrics = run_sft(cfg)
        wall = time.perf_counter() - start
    rate = metrics.get("patches_per_s") or metrics["history"][-1].get("patches_per_s")
    return {"sft_steps": steps, "sft_s_per_step": round(1 / rate, 1) if rate else None, "sft_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", default="/tmp/gemma3-4b", help="where the 4B folder is (written once)")
    ap.add_argument("--patches", type=int, default=4, help="patches of the chip decoded (a share of its 256)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="answer budget per decoded patch")
    ap.add_argument("--sft-steps", type=int, default=2, help="SFT steps (0: skip); the first is not timed")
    ap.add_argument("--append", default="", help="also append the line to this JSONL file")
    args = ap.parse_args()
    with ray_session(RaySettings(num_cpus=3)):  # the SFT worker takes 2 (its torch threads), the readers the rest
        line = measure(args)
    text = json.dumps(line)
    print(text, flush=True)
    if args.append:
        with open(args.append, "a") as f:
            f.write(text + "\n")


def measure(args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    folder, line = Path(args.folder), {"benchmark": "real_size", "model": "gemma3-4b layout, random bf16 weights",
                                       "device": "cpu", "threads": torch.get_num_threads(),
                                       "load_avg_1m_at_start": os.getloadavg()[0]}
    if not (folder / "config.json").exists():
        start = time.perf_counter()
        make_gemma3(folder, size="4b")
        line["build_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    model, processor = load_model(folder, "bfloat16")
    line |= {"load_s": round(time.perf_counter() - start, 1),
             "params": sum(p.numel() for p in model.parameters())}
    chip, labels = labelled_chip()
    line |= layout(processor, chip, labels)
    line |= mapping(model, processor, chip, args.patches, args.max_new_tokens)
    per_patch_tokens = line["suffix_tokens_per_patch"] + line["answer_tokens_per_patch"]
    line["kv_bytes_per_patch"] = int(line["kv_bytes_per_token"] * per_patch_tokens)
    line["s_per_chip_estimate"] = round(line["prefill_s"] + 256 * line["answer_tokens_per_patch"]
                                        * line["s_per_decoded_token"], 1)
    line["lora_sync_bytes"] = lora_sync_bytes(model)
    line["peak_rss_gb"] = round(peak_rss_gb(), 2)
    del model
    if args.sft_steps:
        line |= sft(folder, args.sft_steps)
    return line


if __name__ == "__main__":
    main()
