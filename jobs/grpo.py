"""GRPO post-training of a Gemma3 patch segmenter: Ray rollout actors + Ray Train/DeepSpeed learners.

    python jobs/grpo.py --data SCENES [--model SFT_RUN/model] [--group-size 4] [--max-steps 100] ...
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/grpo.py --data ...

--model defaults to the shipped demo model. Rerunning with the same --run-name and --storage
resumes from the latest checkpoint. Outputs in STORAGE/RUN_NAME: adapter/ (the GRPO LoRA), model/
(a checkpoint every job takes as --model), metrics.json (validation Dice of the start and final
policy on the same patches), curves.png. See magseg_ray.train.grpo.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.cluster import RaySettings, add_ray_arguments, ray_session
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.train.grpo import GRPOConfig, check_config, run_grpo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, GRPOConfig)
    add_ray_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = from_arguments(GRPOConfig, args)
        check_config(cfg)
        with ray_session(RaySettings(address=args.address, gpus=cfg.num_workers * cfg.use_gpu + cfg.num_actors * cfg.gpus_per_actor,
                                      gpu_flags="--use-gpu/--gpus-per-actor",
                                      reserved_cpus=cfg.num_workers * cfg.cpus_per_worker + cfg.num_actors * cfg.cpus_per_actor,
                                      log_file=None if args.verbose else str(cfg.run_dir / "logs" / "ray.log"))):
            summary = run_grpo(cfg)
    except MagsegError as e:
        return bad_input_exit(e)
    keys = ("step", "reward", "dice", "kl", "clip_fraction", "val_dice", "val_field_iou")
    print(json.dumps({"run": str(cfg.run_dir), "start_val_dice": summary["start"]["val_dice"],
                      **{k: summary["final"].get(k) for k in keys}, "val_dice_gain": summary["val_dice_gain"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
