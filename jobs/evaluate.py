"""Score a predicted field map against its truth; print the metrics as one JSON line.

    python jobs/evaluate.py --pred PRED --truth TRUTH [--schema fields3] [--aoi AOI] [--out metrics.json]

PRED and TRUTH are class or instance GeoTIFFs or polygon files (GeoParquet, GeoPackage, ...);
see :mod:`magseg_ray.eval.align` for how they are put on one grid and
:mod:`magseg_ray.eval.metrics` for the metrics (pixel, instance, and Fields of The World's
object precision/recall/F1), and where object F1 is lost: false positives and false negatives by
cause and size (:mod:`magseg_ray.eval.errors`; ``--picture`` draws them). A map written by
``jobs/map_region.py`` (its ``fields.gpkg`` or a raster in its ``masks/``) is scored on the AOI of
its run unless ``--aoi`` names another.
Warnings (an empty truth) go to stderr and into the JSON. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from magseg_ray.chips.windows import load_aoi
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.eval.align import KINDS, load_pair, read_image, run_aoi, run_field_rules, run_seed_px
from magseg_ray.eval.errors import SMALL_M2, error_breakdown, error_picture
from magseg_ray.fields.rules import pixel_metres
from magseg_ray.eval.metrics import evaluate_masks
from magseg_ray.files import write_atomic
from magseg_ray.masks.instances import resolve_seed_px
from magseg_ray.masks.schemas import SCHEMAS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pred", required=True, help="predicted map: class/instance GeoTIFF or polygon file")
    p.add_argument("--truth", "--labels", dest="truth", required=True, help="truth map: class/instance GeoTIFF or "
                   "polygon file (one layer may hold the fields of many scenes, in any CRS)")
    p.add_argument(
        "--schema", default="fields3", choices=sorted(SCHEMAS), help="label schema (default: fields3)"
    )
    for which in ("pred", "truth"):
        p.add_argument(
            f"--{which}-kind",
            default="auto",
            choices=KINDS,
            help=f"what a {which} raster holds; auto (default): its MAGSEG_KIND tag, else "
            "uint8 = class and other types = instance",
        )
    p.add_argument(
        "--resolution",
        type=float,
        help="pixel size in the truth's CRS units, used only when both are vector files "
        "(default: 1 m, in the truth's CRS if projected in metres, else in its UTM zone)",
    )
    p.add_argument("--aoi", help="score only inside this AOI (vector file; default: the AOI of the "
                   "map_region run that wrote PRED, if it is one)")
    p.add_argument("--grid-like", help="score on this raster's pixel grid")
    p.add_argument("--seed-px", type=float, default=-1.0,
                   help="fields of a PRED class raster grow from interior cores deeper than this many pixels, "
                   "as map_region's fields step does (0: each interior component is a field); default -1: the "
                   "depth of the map_region run that wrote PRED (its summary.json), else 0; the run's field rules "
                   "(edge split, minimum size, holes, maximum size) apply too")
    p.add_argument("--image", help="the scene image (GeoTIFF, bands 1-3) on PRED's grid, which the run's edge "
                   "split needs; without it a PRED class raster's fields are made without that split "
                   "(a warning says so)")
    p.add_argument("--object-iou", type=float, default=0.5,
                   help="IoU an object match must exceed (Fields of The World: 0.5, the default; >= 0.5)")
    p.add_argument(
        "--boundary-tolerance",
        type=float,
        default=2,
        help="boundary F-score tolerance in pixels (default: 2)",
    )
    p.add_argument("--make-valid", action="store_true",
                   help="repair invalid polygons (shapely.make_valid) instead of refusing the file")
    p.add_argument("--small-m2", type=float, default=SMALL_M2,
                   help=f"a false positive smaller than this (m²) counts as too small to be a field "
                   f"(default: {SMALL_M2:g})")
    p.add_argument("--picture", type=Path,
                   help="also draw each piece and truth field by kind (match or cause) to this PNG")
    p.add_argument("--out", type=Path, help="also write the JSON to this file (replaced atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the exit status (0, or 2 on a user error)."""
    args = _parser().parse_args(argv)
    try:
        found = (load_aoi(args.aoi), args.aoi) if args.aoi else run_aoi(args.pred)
        aoi, aoi_path = found or (None, None)
        seed_px = resolve_seed_px(args.seed_px, run_seed_px(args.pred) or 0.0)
        pair = load_pair(args.pred, args.truth, args.schema, args.pred_kind, args.truth_kind, args.resolution,
                         args.make_valid, aoi, args.grid_like, seed_px, run_field_rules(args.pred),  # None: off
                         read_image(args.image) if args.image else None)
        metrics = evaluate_masks(pair.pred_classes, pair.truth_classes, args.schema, pair.pred_instances,
                                 pair.truth_instances, args.boundary_tolerance, args.object_iou)
        pixel_m2 = pixel_metres(pair.transform, pair.crs, pair.pred_instances.shape) ** 2
        errors = error_breakdown(pair.pred_instances, pair.truth_instances, pixel_m2, args.small_m2, args.object_iou)
    except MagsegError as e:
        return bad_input_exit(e)
    if args.picture:
        error_picture(args.picture, None, pair.pred_instances, pair.truth_instances, pixel_m2, args.small_m2,
                      title=f"{Path(args.pred).name}: pieces by kind, truth fields outlined")
    for warning in pair.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rules = run_field_rules(args.pred)
    record = {"pred": str(args.pred), "truth": str(args.truth), "aoi": aoi_path, "seed_px": seed_px,
              "field_rules": rules.__dict__ if rules else None,
              "warnings": list(pair.warnings),
              **metrics, "errors": errors}
    text = json.dumps(record, allow_nan=False)
    if args.out:
        write_atomic(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
