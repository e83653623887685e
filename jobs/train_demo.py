"""Train the demo model: pack labelled scenes once, then run the recipe in one process (GPU or CPU).

    python jobs/train_demo.py pack --data ../shared/data/naip-fields --out data/naip-packed
    python jobs/train_demo.py train --data data/naip-packed --out runs/demo [--sft-steps 1000] ...
    python jobs/train_demo.py calibrate --data data/naip-packed --model runs/demo/model

`pack` needs the full install (GDAL, geopandas); `train` needs only PyTorch and transformers, so it
runs on a lent GPU machine from the packed folder (about 15 MB). `train` writes OUT/model (every
job's --model), OUT/metrics.json and OUT/curves.png; rerunning it continues a stopped run.
`calibrate` picks the model's boundary_bias on the training scenes and writes it into its card
(magseg_ray.train.calibrate). See
magseg_ray.train.recipe and the demo model's card for the GPU command.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.train.recipe import RecipeConfig, run_recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="labelled scenes -> a packed folder that train reads")
    pack.add_argument("--data", required=True, help="labelled scenes: folder, catalog, file:// or s3:// prefix")
    pack.add_argument("--out", required=True, help="folder to write the packed scenes to")
    pack.add_argument("--labels", default="", help="field polygons for the scenes (fiboa GeoParquet, GeoPackage, "
                      "shapefile; any CRS; default: each scene's <id>.labels.tif or <id>.fields.gpkg)")
    pack.add_argument("--val-fraction", type=float, default=0.2, help="share of scenes held out (default 0.2)")
    add_arguments(commands.add_parser("train", help="run the recipe on a packed folder"), RecipeConfig)
    calibrate = commands.add_parser("calibrate", help="choose a model's boundary_bias on the training scenes")
    calibrate.add_argument("--data", required=True, help="packed scene folder (see pack)")
    calibrate.add_argument("--model", required=True, help="model folder; its magseg.json gets the chosen bias")
    calibrate.add_argument("--patches", type=int, default=192, help="training patch windows answered (default 192)")
    calibrate.add_argument("--biases", default="1,3,10,30,100", help="biases tried (default 1,3,10,30,100)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            from magseg_ray.train.demo_data import pack_scenes

            index = pack_scenes(args.data, args.out, args.val_fraction, args.labels)
            print(json.dumps({"out": args.out, "scenes": len(index["scenes"]),
                              "val": sum(s["split"] == "val" for s in index["scenes"])}))
            return 0
        if args.command == "calibrate":
            from magseg_ray.train.calibrate import calibrate_boundary

            try:
                biases = [float(b) for b in args.biases.split(",")]
            except ValueError:
                parser.error(f"--biases must be numbers separated by commas, got {args.biases!r}")
            print(json.dumps(calibrate_boundary(args.model, args.data, args.patches, biases)))
            return 0
        state = run_recipe(from_arguments(RecipeConfig, args))
    except MagsegError as e:
        return bad_input_exit(e)
    print(json.dumps({"out": args.out, "status": state["status"], "final": state["history"][-1],
                      "vision": state["vision"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
