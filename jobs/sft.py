"""LoRA SFT of a Gemma3 patch segmenter on Ray Train with DeepSpeed.

    python jobs/sft.py --data SCENES [--base small] [--num-workers 2] [--max-steps 200] ...
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/sft.py --data ...

Rerunning with the same --run-name and --storage resumes from the latest checkpoint. Outputs in
STORAGE/RUN_NAME: model/ (a checkpoint every job takes as --model), adapter/ (PEFT; not with
--full), metrics.json, curves.png. See magseg_ray.train.sft.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.cluster import RaySettings, add_ray_arguments, ray_session
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.train.sft import SFTConfig, check_config, run_sft


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, SFTConfig)
    add_ray_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = from_arguments(SFTConfig, args)
        check_config(cfg)
        with ray_session(RaySettings(address=args.address, gpus=cfg.num_workers * cfg.use_gpu,
                                     reserved_cpus=cfg.num_workers * cfg.cpus_per_worker,
                                     log_file=None if args.verbose else str(cfg.run_dir / "logs" / "ray.log"))):
            summary = run_sft(cfg)
    except MagsegError as e:
        return bad_input_exit(e)
    print(json.dumps({"run": str(cfg.run_dir), **summary["final"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
