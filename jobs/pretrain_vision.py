"""Dense pretraining of an offline preset's vision tower before SFT (stands in for SigLIP's).

    python jobs/pretrain_vision.py --data SCENES --out runs/small-vision [--base small] [--steps 600]
    python jobs/sft.py --data SCENES --base runs/small-vision --full ...

Trains the vision tower and projector so that each image token predicts the class shares of the
pixels it covers, in --sub-cells x --sub-cells blocks (training split only); writes a whole model
that SFT's --base takes (with the same --crop-scale), with vision_pretrain.json and
vision_pretrain.png. See magseg_ray.train.vision. A real Gemma3
checkpoint does not need this step.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.train.vision import VisionPretrainConfig, pretrain_vision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, VisionPretrainConfig)
    args = parser.parse_args(argv)
    try:
        summary = pretrain_vision(from_arguments(VisionPretrainConfig, args))
    except MagsegError as e:
        return bad_input_exit(e)
    print(json.dumps({"model": summary["model"], **summary["final"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
