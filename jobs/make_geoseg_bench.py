"""Make a small GeoSeg benchmark from labelled scenes: template queries over their fields.

    python jobs/make_geoseg_bench.py SCENES OUT [--window 256] [--per-scene 1] [--min-pixels 200]

SCENES holds <id>.tif + <id>.labels.tif pairs (e.g. magseg_ray/assets/demo/scenes, tests/data/naip,
../shared/data/naip-fields). OUT gets images/, masks/ and items.jsonl for jobs/geoseg.py --bench;
levels and templates are described in magseg_ray.geoseg.templates.
"""

from __future__ import annotations

import argparse
import collections
import sys

from magseg_ray.errors import bad_input_exit
from magseg_ray.geoseg.templates import make_bench


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenes", help="folder of <id>.tif + <id>.labels.tif")
    p.add_argument("out", help="benchmark folder to write")
    p.add_argument("--window", type=int, default=256, help="image side in pixels (default: 256)")
    p.add_argument("--per-scene", type=int, default=1, help="windows per scene, most field pixels first (default: 1)")
    p.add_argument("--min-pixels", type=int, default=200, help="smallest field counted, in pixels (default: 200)")
    args = p.parse_args(argv)
    items = make_bench(args.scenes, args.out, args.window, args.per_scene, args.min_pixels)
    if not items:
        return bad_input_exit(f"no labelled scene with fields under {args.scenes}")
    levels = collections.Counter(i["level"] for i in items)
    print(f"{len(items)} items ({', '.join(f'{k}: {v}' for k, v in sorted(levels.items()))}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
