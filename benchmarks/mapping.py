"""Mapping throughput: the model actor's decoder against naive per-patch ``generate``; reducer speed.

    python benchmarks/mapping.py [--model DIR] [--chips 8] [--baseline-every 4] [--draft-tokens 12] [--reducer-px 8192]
        [--device auto]

1. Decoding, on chips of the bundled demo scenes with the same model: the actor path
   (:func:`~magseg_ray.model.batching.answer_chips` on ``--chips`` chips in one call, as a mapping
   actor takes ``--chips-per-call``: the chip image and instruction encoded once per chip, patch
   suffixes tokenized alone, every chip's patches decoded with continuous batching from those KV
   prefixes, ``--draft-tokens`` drafts per step; ``actor_forward_passes`` counts its model calls)
   against the named baseline ``naive_generate_batch1`` (Hugging Face ``generate`` on
   each whole patch prompt, batch 1) on every ``--baseline-every``-th patch of the same chips.
   The actor runs first; both share the grammar's cache of allowed tokens, so the baseline finds it
   warm (which favours the baseline).
   Greedy decoding as the mapping actor decodes (kind first, the model card's ``boundary_bias``),
   so both give the same answers; ``answers_equal`` reports the share of the baseline's patches
   that do.
2. Reducer: polygonizing, simplifying and measuring the fields of a ``reducer_px`` square class
   mask at 0.5 m tiled from synthetic smallholder scenes (about 210 fields per 512 m), in km² per
   second of one core, with the model card's ``field_seed_px`` (fields grown from cores, as the
   map's fields step does; ``reducer_seed_px``); the country-scale arithmetic lives in the scale plan.
   ``reducer_sha256`` fingerprints the polygons (their WKB, instance ids and pixel counts), so a
   faster reducer can show it writes the same fields.

The ``*_tokens_per_patch`` figures count what each path feeds the language model per patch (image
tokens included; the vision tower's work is not counted): on a CPU, where each fed token costs
compute, their quotient bounds what the actor can gain beyond saving ``generate``'s overhead.

Prints one JSON line; ``ratio`` = actor patches/s / baseline patches/s (wall clock);
``cpu_ratio`` and ``reducer_km2_per_cpu_s`` use the process's CPU time instead, the fair clock on a
shared machine where other processes take the cores for minutes at a time (with ``--threads 1`` it
is the work done; wall-clock figures there mostly measure the neighbours).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import torch

from magseg_ray.model.checkpoint import DEMO_MODEL, load_model
from magseg_ray.model.batching import answer_chips
from magseg_ray.model.card import ModelPrompt, read_model_prompt
from magseg_ray.model.generate import GenerationSettings, answer_patches
from magseg_ray.prompt import build_patch_prompt, patch_boxes


def reducer_km2_per_s(size_px: int, seed_px: float) -> dict:
    import shapely
    from rasterio.transform import from_origin

    from magseg_ray.fields.polygons import measure, scene_fields
    from magseg_ray.masks.schemas import classes_from_instances, get_schema
    from magseg_ray.scenes.synthetic import SyntheticConfig, make_scene

    schema = get_schema("fields3")
    fields3 = [classes_from_instances(make_scene(SyntheticConfig(seed=s, size_px=1024)).instances, schema)
               for s in range(4)]
    n = size_px // 1024
    mosaic = np.block([[fields3[(i + j) % 4] for j in range(n)] for i in range(n)])
    confidence = np.ones(mosaic.shape, np.float32)
    start, cpu = time.perf_counter(), time.process_time()
    fields = measure(scene_fields(mosaic, confidence, from_origin(500_000, 1_400_000, 0.5, 0.5), "EPSG:32648", schema,
                                  seed_px=seed_px))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    digest = hashlib.sha256(b"".join(shapely.to_wkb(fields.geometry.values)))
    digest.update(fields[["instance", "pixels"]].to_numpy().tobytes())
    km2 = (mosaic.shape[0] * 0.5) * (mosaic.shape[1] * 0.5) / 1e6
    return {"reducer_km2": round(km2, 3), "reducer_seed_px": seed_px, "reducer_fields": len(fields), "reducer_seconds": round(seconds, 2),
            "reducer_km2_per_s": round(km2 / seconds, 3), "reducer_cpu_seconds": round(cpu, 2),
            "reducer_km2_per_cpu_s": round(km2 / cpu, 3), "reducer_sha256": digest.hexdigest()}


def against_baseline(model, processor, chips, boxes, prompt, settings, every: int, fast: list, actor_rate: float,
                     actor_cpu_rate: float, fed: list) -> dict:
    """The baseline's figures: naive ``generate`` (batch 1) on every ``every``-th patch of each chip,
    its rates against the actor's (patches per wall and per CPU second), its tokens fed per patch
    (``fed``: the counting hook's list) and the share of its answers the actor matched."""
    sample = list(range(0, len(boxes), every))  # the same patches of every chip
    start, cpu = time.perf_counter(), time.process_time()
    naive = [a for chip in chips
             for a in answer_patches(model, processor, [build_patch_prompt(chip, boxes[j], prompt) for j in sample], prompt,
                                     settings)]
    naive_s, naive_cpu = time.perf_counter() - start, time.process_time() - cpu
    m = len(naive)
    same = [fast[c * len(boxes) + j] for c in range(len(chips)) for j in sample]
    return {"baseline": "naive_generate_batch1", "baseline_patches": m, "baseline_tokens_per_patch": round(sum(fed) / m, 1),
            "baseline_patches_per_s": round(m / naive_s, 2), "ratio": round(actor_rate / (m / naive_s), 2),
            "baseline_cpu_s": round(naive_cpu, 2), "cpu_ratio": round(actor_cpu_rate / (m / naive_cpu), 2),
            "answers_equal": round(sum(a.text == b.text for a, b in zip(same, naive)) / m, 4)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL), help="model folder (default: the demo model)")
    parser.add_argument("--chips", type=int, default=8,
                        help="chips the actor path decodes in one call (the mapping job's --chips-per-call)")
    parser.add_argument("--baseline-every", type=int, default=4,
                        help="the baseline decodes every this many-th patch of every chip (its rate per patch "
                             "does not depend on the others, and the sample spans the same chips); 0: no baseline")
    parser.add_argument("--batch-size", type=int, default=64, help="patches per batch on the actor path")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="answer budget (0: the longest mask)")
    parser.add_argument("--draft-tokens", type=int, default=GenerationSettings.draft_tokens,
                        help="the actor's draft tokens per step (0: one token per step)")
    parser.add_argument("--reducer-px", type=int, default=8192,
                        help="side of the reducer's mask (multiple of 1024; 0: no reducer figures)")
    parser.add_argument("--chips-file", help="decode the chips of this .npy (N x H x W x 3) instead of the demo scene's")
    parser.add_argument("--save-chips", help="write the demo scene's first --chips chips to this .npy and stop")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto: cuda when there is one")
    args = parser.parse_args(argv)
    if args.baseline_every < 0:
        parser.error(f"--baseline-every {args.baseline_every}: must be >= 1, or 0 for no baseline")
    torch.set_num_threads(args.threads)
    card = read_model_prompt(args.model) or ModelPrompt()
    if args.chips_file:
        chips = list(np.load(args.chips_file))[:args.chips]
    else:  # the geo stack is imported only here: a chips file runs where PyTorch is all there is (a lent GPU)
        from magseg_ray.map_region import demo_chips

        chips = demo_chips(card.chip_size, args.chips)
    if args.save_chips:
        np.save(args.save_chips, np.stack(chips))
        return {}
    prompt = card.prompt()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, processor = load_model(args.model, device=device)  # on a GPU in the checkpoint's dtype, as the actor
    boxes = patch_boxes(card.chip_size, card.chip_size, card.patch_size)
    budget = args.max_new_tokens or None
    fed = []  # tokens of each model call (prompt, suffix, step or draft tokens; image tokens included)
    counting = model.register_forward_hook(lambda _m, _a, kw, _o: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    start, cpu = time.perf_counter(), time.process_time()
    fast = [a for answers in answer_chips(model, processor, [(chip, boxes) for chip in chips], prompt,
                                          GenerationSettings(args.batch_size, 0.0, budget, boundary_bias=card.boundary_bias,
                                                             draft_tokens=args.draft_tokens))
            for a in answers]
    actor_s, actor_cpu = time.perf_counter() - start, time.process_time() - cpu
    actor_fed, fed[:] = list(fed), []
    n = len(fast)
    result = {
        "benchmark": "mapping", "model": str(args.model), "threads": args.threads,
        "device": device if device == "cpu" else f"{device}: {torch.cuda.get_device_name()}",
        "chip_size": card.chip_size, "chips": len(chips), "patches": n,
        "answer_tokens_mean": round(float(np.mean([len(processor.tokenizer(a.text)["input_ids"]) + 1 for a in fast])), 2),
        "draft_tokens": args.draft_tokens, "actor_forward_passes": len(actor_fed),
        "actor_tokens_per_patch": round(sum(actor_fed) / n, 1), "actor_patches_per_s": round(n / actor_s, 2),
        "actor_cpu_s": round(actor_cpu, 2),
    }
    if args.baseline_every:
        result.update(against_baseline(model, processor, chips, boxes, prompt, GenerationSettings(
            1, 0.0, budget, boundary_bias=card.boundary_bias), args.baseline_every, fast, n / actor_s, n / actor_cpu, fed))
    counting.remove()
    if args.reducer_px:
        result.update(reducer_km2_per_s(args.reducer_px, card.field_seed_px))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
