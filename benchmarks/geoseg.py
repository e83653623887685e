"""GeoSeg per-stage latency on the offline tiny presets, and what CLIP Surgery's second path costs.

    python benchmarks/geoseg.py [--repeat 5] [--size 256] [--presets DIR]

Builds (or reuses) the tiny presets, then on a seeded random RGB image of ``--size`` px times
each stage of the pipeline: grounding (the Gemma3 grounder generating its answer, greedy, up to
96 tokens), refinement, route A (CLIP Surgery map + keypoints + SAM), route B (SAM3 text route)
and fusion, over ``--repeat`` queries with a given box (median seconds; grounding is timed on its
own calls). Named baseline: one plain ``CLIPVisionModel`` forward of the crop against the
surgery forward (both paths) of the same crop; ``surgery_ratio`` = surgery / plain. The tiny
presets have random weights: these are plumbing costs, not a real model's. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch


def _median(values) -> float:
    return round(statistics.median(values), 5)


def main(argv=None) -> dict:
    from magseg_ray.geoseg.clip_surgery import image_tokens
    from magseg_ray.geoseg.config import GeoSegConfig
    from magseg_ray.geoseg.loading import to_pixels
    from magseg_ray.geoseg.run import ModelsConfig, build_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timed queries (default 5)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--presets", default=None, help="folder for the tiny presets (default: a temporary one)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build_pipeline(ModelsConfig(tiny=args.presets or tmp), GeoSegConfig(text_score_threshold=0.0))
        image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
        box = (args.size * 0.3, args.size * 0.3, args.size * 0.7, args.size * 0.7)
        pipeline.segment(image, "the field", box=box)  # warm-up
        stages: dict[str, list] = {}
        grounding = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            pipeline.grounder(image, "the largest field")
            grounding.append(time.perf_counter() - t)
            for k, v in pipeline.segment(image, "the field", box=box).seconds.items():
                stages.setdefault(k, []).append(v)
        stages["grounding"] = grounding
        clip = pipeline.points.surgery
        crop = image[int(box[1]):int(box[3]), int(box[0]):int(box[2])]
        pixels = to_pixels(crop, clip.image)
        plain, surgery = [], []
        with torch.no_grad():
            for _ in range(args.repeat):
                t = time.perf_counter()
                clip.clip.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
                plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                image_tokens(clip.clip, pixels, clip.blocks)
                surgery.append(time.perf_counter() - t)
    result = {"benchmark": "geoseg", "presets": "tiny (random weights)", "image_px": args.size,
              "repeat": args.repeat, **{f"{k}_s": _median(v) for k, v in stages.items()},
              "total_s": _median([sum(x) for x in zip(*stages.values())]),
              "baseline": "plain CLIPVisionModel forward of the crop", "clip_plain_s": _median(plain),
              "clip_surgery_s": _median(surgery), "surgery_ratio": round(_median(surgery) / _median(plain), 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
