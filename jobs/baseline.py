"""Write a baseline field map of a scene as a class GeoTIFF, for jobs/evaluate.py to score.

    python jobs/baseline.py SCENE.tif OUT.tif [--method threshold|everything]

See magseg_ray.eval.baselines for the methods. The output has the scene's grid, schema fields3
classes (0 background, 1 field, 2 boundary) and the tag MAGSEG_KIND=class. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import rasterio

from magseg_ray.errors import MagsegError, SceneError, bad_input_exit
from magseg_ray.eval.align import KIND_TAG
from magseg_ray.eval.baselines import BASELINES, baseline_classes
from magseg_ray.files import replace_atomically


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", help="RGB GeoTIFF of the scene")
    p.add_argument("out", help="class GeoTIFF to write")
    p.add_argument("--method", choices=BASELINES, default="threshold", help="baseline (default: threshold)")
    args = p.parse_args(argv)
    try:
        try:
            with rasterio.open(args.scene) as src:
                image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
                profile = dict(driver="GTiff", width=src.width, height=src.height, count=1, dtype="uint8",
                               crs=src.crs, transform=src.transform, compress="deflate")
        except rasterio.errors.RasterioError as e:
            raise SceneError(f"cannot read scene {args.scene}: {e}") from None
        classes = baseline_classes(image, args.method)

        def write(tmp):
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(classes, 1)
                dst.update_tags(**{KIND_TAG: "class"})

        replace_atomically(args.out, write)
    except MagsegError as e:
        return bad_input_exit(e)
    print(f"{args.method} baseline of {args.scene} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
