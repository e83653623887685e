"""How the model card's fields settings are chosen: the fields step of one map, rerun at many settings.

    python magseg_ray/assets/demo_model/fields_sweep.py --run OUT/map --data ../shared/data/naip-fields \\
        [--min-m2 0,250,500] [--hole-m2 0,inf] [--max-m2 0] [--seed-px 16] [--pictures DIR] \\
        [--edge-quantile 0,0.85 --edge-sigma-m 2 --edge-depth-m 12 --edge-core-m2 1000]

The model's per-pixel classes of a ``map_region`` run (its ``masks/<scene>.tif``, written by
``evaluate.py``'s map) are the cache: nothing is decoded again. For each scene the fields are grown
from cores once per core depth (``--seed-px``, default the run's), then every combination of the
:class:`~magseg_ray.fields.rules.FieldRules` values given is applied to the instance raster and
scored (the edge split reading each scene's image) against ``<scene>.fields.gpkg`` on the mask's grid,
as ``evaluate.py`` scores the ``model`` row: instance and one-to-one IoU (means over scenes), object precision/recall/F1 pooled over
scenes, pieces per truth field, and the false positives and negatives by cause
(:mod:`magseg_ray.eval.errors`). One JSON line per setting; the last line names the setting with
the highest object F1 among those that keep both IoUs at least as high as the rules-off setting.

Simplification acts on polygons, not on this raster: ``--polygons`` scores every setting (and each
``--simplify-m`` value) through the fields step itself instead (:func:`~magseg_ray.fields.polygons.scene_fields`,
its polygons rasterized on the mask's grid as ``evaluate.py`` scores ``fields.gpkg``), a few times
slower. Run it on a map of **training** scenes (``evaluate.py --split train``) to choose; on the
held-out map only to report.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import rasterio

from magseg_ray.eval.align import load_pair, run_seed_px
from magseg_ray.eval.errors import add_breakdowns, error_breakdown, error_picture
from magseg_ray.eval.metrics import instance_metrics, object_metrics
from magseg_ray.fields.polygons import scene_fields
from magseg_ray.fields.rules import FieldRules, apply_rules, pixel_metres
from magseg_ray.masks.instances import resolve_seed_px
from magseg_ray.masks.schemas import get_schema


def _values(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _scenes(run: Path, data: Path, seed_px: float) -> list[dict]:
    """Each scene of the run: instances grown once, truth on the mask's grid, pixel size, image, and
    what the fields step needs (classes, grid)."""
    out = []
    for mask in sorted((run / "masks").glob("*.tif")):
        truth = data / f"{mask.stem}.fields.gpkg"
        pair = load_pair(mask, truth, "fields3", make_valid=True, seed_px=seed_px)
        with rasterio.open(data / f"{mask.stem}.tif") as src:
            image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        metres = pixel_metres(pair.transform, pair.crs, pair.pred_instances.shape)
        out.append({"scene": mask.stem, "pred": pair.pred_instances, "truth": pair.truth_instances,
                    "metres": metres, "image": image, "mask": mask, "truth_path": truth, "classes": pair.pred_classes,
                    "transform": pair.transform, "crs": pair.crs, "seed_px": seed_px})
    return out


def _polygon_instances(s: dict, rules: FieldRules, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The scene's fields made by the fields step, rasterized on the mask's grid with its truth."""
    schema = get_schema("fields3")
    fields = scene_fields(s["classes"], np.ones(s["classes"].shape, np.float32), s["transform"], s["crs"], schema,
                          seed_px=s["seed_px"], rules=rules, image=s["image"])
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{s['scene']}.gpkg"
    fields[["geometry"]].to_file(path)
    pair = load_pair(path, s["truth_path"], "fields3", make_valid=True, grid_like=s["mask"])
    return pair.pred_instances, pair.truth_instances


def score(scenes: list[dict], rules: FieldRules, pictures: Path | None = None, polygons: Path | None = None) -> dict:
    """One setting over every scene: IoUs averaged, object counts and error causes pooled; through the
    fields step's polygons (written under ``polygons``) when that is given."""
    ious, one, errors, tp = [], [], None, 0
    for s in scenes:
        if polygons:
            pred, truth = _polygon_instances(s, rules, polygons)
        else:
            pred, truth = apply_rules(s["pred"], rules, s["metres"], image=s["image"]), s["truth"]
        s = {**s, "truth": truth}
        inst = instance_metrics(pred, s["truth"])
        ious.append(inst["mean_iou"])
        one.append(inst["one_to_one_mean_iou"])
        tp += object_metrics(pred, s["truth"])["tp"]
        part = error_breakdown(pred, s["truth"], s["metres"] ** 2)
        errors = part if errors is None else add_breakdowns(errors, part)
        if pictures:
            error_picture(pictures / f"{s['scene']}.errors.png", s["image"], pred, s["truth"], s["metres"] ** 2,
                          title=f"{s['scene']}: {part['pieces']} pieces, {part['truth_fields']} truth fields, "
                          f"{part['tp']} matched")
    f1 = 2 * tp / (errors["pieces"] + errors["truth_fields"]) if errors["pieces"] + errors["truth_fields"] else None
    return {"rules": rules.__dict__, "instance_iou": float(np.mean(ious)), "one_to_one_iou": float(np.mean(one)),
            "object_f1": f1, "tp": tp, "pieces": errors["pieces"], "truth_fields": errors["truth_fields"],
            "pieces_per_field": errors["pieces_per_truth_field"],
            "fp_by_cause": {c: v["total"] for c, v in errors["false_positives"].items()},
            "fn_by_cause": {c: v["total"] for c, v in errors["false_negatives"].items()}, "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="a map_region run folder (evaluate.py's OUT/map)")
    p.add_argument("--data", required=True, type=Path, help="folder of the scenes and their .fields.gpkg truth")
    p.add_argument("--seed-px", type=float, default=-1.0, help="core depth (default -1: the run's)")
    p.add_argument("--min-m2", type=_values, default=[0.0], help="comma-separated minimum field sizes (m²)")
    p.add_argument("--hole-m2", type=_values, default=[0.0],
                   help="comma-separated largest holes filled (m²; inf: all)")
    p.add_argument("--max-m2", type=_values, default=[0.0], help="comma-separated maximum field sizes (m²; 0: none)")
    p.add_argument("--simplify-m", type=_values, default=[0.0],
                   help="comma-separated simplification tolerances (m; 0: 1 px); only with --polygons")
    p.add_argument("--edge-quantile", type=_values, default=[0.0],
                   help="comma-separated edge split quantiles (0: off; magseg_ray/fields/edges.py)")
    p.add_argument("--edge-sigma-m", type=_values, default=[2.0], help="comma-separated edge gradient scales (m)")
    p.add_argument("--edge-depth-m", type=_values, default=[12.0], help="comma-separated edge split core depths (m)")
    p.add_argument("--edge-core-m2", type=_values, default=[1000.0], help="comma-separated smallest cores (m²)")
    p.add_argument("--polygons", type=Path, metavar="TMP",
                   help="score through the fields step's polygons, written to this folder (see above)")
    p.add_argument("--pictures", type=Path, help="draw each scene's errors at the first setting into this folder")
    p.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = p.parse_args()
    seed_px = resolve_seed_px(args.seed_px, run_seed_px(args.run / "masks" / "x.tif") or 0.0)
    scenes = _scenes(args.run, args.data, seed_px)
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
    lines, base = [], score(scenes, FieldRules(), polygons=args.polygons)
    settings = itertools.product(args.min_m2, args.hole_m2, args.max_m2, args.simplify_m if args.polygons else [0.0],
                                 args.edge_quantile, args.edge_sigma_m, args.edge_depth_m, args.edge_core_m2)
    for k, (lo, hole, hi, simplify, quantile, sigma, depth, core) in enumerate(settings):
        rules = FieldRules(min_m2=lo, max_m2=hi, hole_m2=hole, simplify_m=simplify, edge_quantile=quantile,
                           edge_sigma_m=sigma, edge_depth_m=depth, edge_core_m2=core)
        row = score(scenes, rules, args.pictures if k == 0 else None, args.polygons)
        lines.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "errors"}), flush=True)
    fair = [r for r in lines
            if r["instance_iou"] >= base["instance_iou"] and r["one_to_one_iou"] >= base["one_to_one_iou"]]
    best = max(fair or lines, key=lambda r: r["object_f1"] or 0)
    print(json.dumps({"seed_px": seed_px, "scenes": [s["scene"] for s in scenes], "rules_off": base["rules"],
                      "best": best["rules"], "best_object_f1": best["object_f1"]}))
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in lines))


if __name__ == "__main__":
    main()
