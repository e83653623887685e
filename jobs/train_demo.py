"""Train the demo model in one command: dense vision pretraining, then frozen-tower SFT.

    python jobs/train_demo.py --data SCENES --out runs/demo [--vision-steps 1000 --sft-steps 1000]
    python jobs/train_demo.py --data SCENES --out runs/gpu --use-gpu --num-workers 1 --batch-size 64 ...

Writes OUT/model (every job's --model), OUT/metrics.json, OUT/vision and OUT/sft (curves,
checkpoints). The GPU recipe of the demo model's card is this command. See magseg_ray.train.recipe.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError
from magseg_ray.train.recipe import RecipeConfig, run_recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, RecipeConfig)
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    args = parser.parse_args(argv)
    try:
        cfg = from_arguments(RecipeConfig, args)
        with ray_session(RaySettings(address=args.address)):
            summary = run_recipe(cfg)
    except MagsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": summary["model"], "sft": summary["sft"], "vision": summary.get("vision")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
