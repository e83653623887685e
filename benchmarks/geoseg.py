"""GeoSeg per-stage latency per chip on the offline tiny presets, what CLIP Surgery's second path
costs, and the AOI job's chips per second with 1 and 2 actors.

    python benchmarks/geoseg.py [--repeat 5] [--size 256] [--presets DIR] [--append cluster/benchmarks.jsonl]

Builds (or reuses) the tiny presets, then on a seeded random RGB chip of ``--size`` px times
each stage of the pipeline: grounding (the Gemma3 grounder generating its answer, greedy, up to
96 tokens), refinement, route A (CLIP Surgery map + keypoints + SAM), route B (SAM3 text route)
and fusion, over ``--repeat`` queries with a given box (median seconds; grounding is timed on its
own calls). Named baseline: one plain ``CLIPVisionModel`` forward of the crop against the
surgery forward (both paths) of the same crop; ``surgery_ratio`` = surgery / plain. The tiny
presets have random weights: these are plumbing costs, not a real model's.

AOI throughput: ``jobs/geoseg.py --aoi``'s flow (:func:`~magseg_ray.geoseg.aoi.plan_query`, then
:func:`~magseg_ray.map_region.run_map_region`) over the bundled demo AOI (3 scenes) in ``--size`` px
chips, with both routes and no grounder (each chip is the box: a random grounder rarely writes
one, which would leave the routes idle), on a private local Ray of 2 CPUs, once with 1 actor and
once with 2 (0.5 CPU and one torch thread each), each into a fresh folder. Chips per second is
chips / the model stage's wall time (``model_seconds``: actor start, reads, GeoSeg, writes);
``aoi_actor_ratio`` = 2 actors / 1 actor. One JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _median(values) -> float:
    return round(statistics.median(values), 5)


def aoi_rates(presets: str, chip_size: int, root: Path) -> list[dict]:
    """The AOI job's ``summary.json`` numbers with 1 and 2 actors (see module doc)."""
    from magseg_ray.cluster import RaySettings, ray_session
    from magseg_ray.geoseg.aoi import AoiConfig, plan_query
    from magseg_ray.geoseg.config import GeoSegConfig
    from magseg_ray.geoseg.run import ModelsConfig
    from magseg_ray.map_region import DEMO_DIR, run_map_region

    folders = {k: str(Path(presets) / n) for k, n in (("clip", "clip"), ("points", "sam3_tracker"), ("sam3", "sam3"))}
    models, config = ModelsConfig(**folders), GeoSegConfig(text_score_threshold=0.0)
    out = []
    with contextlib.redirect_stdout(sys.stderr), ray_session(RaySettings(num_cpus=2)):
        for actors in (1, 2):
            cfg = AoiConfig(aoi=str(DEMO_DIR / "demo.geojson"), query="the field", out=str(root / f"aoi{actors}"),
                            chip_size=chip_size, num_actors=actors, cpus_per_actor=0.5)
            summary = run_map_region(plan_query(cfg, models, config))
            out.append({"actors": actors, "chips": summary["chips"], "model_seconds": summary["model_seconds"],
                        "chips_per_s": round(summary["chips"] / summary["model_seconds"], 3),
                        "objects": summary["fields"]})
    return out


def main(argv=None) -> dict:
    from magseg_ray.geoseg.clip_surgery import image_tokens
    from magseg_ray.geoseg.config import GeoSegConfig
    from magseg_ray.geoseg.loading import to_pixels
    from magseg_ray.geoseg.run import ModelsConfig, build_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5, help="timed queries (default 5)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--presets", default=None, help="folder for the tiny presets (default: a temporary one)")
    p.add_argument("--append", default="", help="also append the line to this JSONL file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # this machine's 2 cores are shared: the figures are only as good as it is idle
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
        rates = aoi_rates(args.presets or tmp, args.size, Path(tmp))
    result = {"benchmark": "geoseg", "presets": "tiny (random weights)", "device": "cpu",
              "cpus": os.cpu_count(), "load_avg_1m_at_start": round(load, 2), "chip_px": args.size,
              "repeat": args.repeat, **{f"{k}_s": _median(v) for k, v in stages.items()},
              "total_s": _median([sum(x) for x in zip(*stages.values())]),
              "baseline": "plain CLIPVisionModel forward of the crop", "clip_plain_s": _median(plain),
              "clip_surgery_s": _median(surgery), "surgery_ratio": round(_median(surgery) / _median(plain), 3),
              "aoi": "demo AOI, 3 scenes, both routes, no grounder", "aoi_runs": rates,
              "aoi_baseline": "1 actor", "aoi_actor_ratio": round(rates[1]["chips_per_s"] / rates[0]["chips_per_s"], 3)}
    line = json.dumps(result)
    print(line)
    if args.append:
        with open(args.append, "a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
