"""How the model card's table was measured: the model against the two baselines on held-out scenes.

    python magseg_ray/assets/demo_model/evaluate.py --data ../shared/data/naip-fields --out /tmp/eval

Maps a 400 m square at the centre of each validation scene (``split_of(id, 0.2) == "val"``, the
scenes SFT held out) with ``jobs/map_region.py``, writes both baselines on exactly the mapped
pixels, and scores all three with the rules of ``jobs/evaluate.py`` (truth blanked where a map has
no data; ``--make-valid``). Prints one JSON line per scene and the means; writes ``eval.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from magseg_ray.chips.pipeline import split_of
from magseg_ray.eval.align import load_pair
from magseg_ray.eval.baselines import baseline_classes
from magseg_ray.eval.metrics import evaluate_masks
from magseg_ray.model.checkpoint import DEMO_MODEL
from magseg_ray.scenes.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of naip-fields scenes")
    p.add_argument("--out", required=True, help="output folder (a fresh one)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="model folder (default: the demo model)")
    p.add_argument("--half-side", type=float, default=200.0, help="half the square's side, in metres")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    scenes = load_catalog(data).scenes
    val = scenes[[split_of(s, 0.2) == "val" for s in scenes["id"]]]
    r = args.half_side
    squares = []
    for row in val.itertuples():
        x0, y0, x1, y1 = row.native_bounds
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        square = gpd.GeoSeries([shapely.box(cx - r, cy - r, cx + r, cy + r)], crs=row.crs)
        squares.append(square.to_crs(4326).iloc[0])
    out.mkdir(parents=True, exist_ok=True)
    aoi = out / "val_aoi.geojson"
    aoi.write_text(gpd.GeoSeries(squares, crs=4326).to_json())
    subprocess.run([sys.executable, str(ROOT / "jobs/map_region.py"), "--aoi", str(aoi), "--catalog", str(data),
                    "--model", args.model, "--out", str(out / "map"), "--cpus-per-actor", "1"], check=True)
    rows = []
    for row in val.itertuples():
        pred = out / "map" / "masks" / f"{row.id}.tif"
        with rasterio.open(pred) as src:
            covered, profile = src.read(1) != 255, src.profile
        with rasterio.open(data / f"{row.id}.tif") as src:
            image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        result = {"scene": row.id}
        for name in ("model", "threshold", "everything"):
            path = pred
            if name != "model":
                path = out / f"{row.id}.{name}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(np.where(covered, baseline_classes(image, name), 255).astype(np.uint8), 1)
            pair = load_pair(path, data / f"{row.id}.fields.gpkg", "fields3", make_valid=True)
            m = evaluate_masks(pair.pred_classes, pair.truth_classes, "fields3", pair.pred_instances,
                               pair.truth_instances)
            field = m["instance"]["field"]
            result[name] = {"field_instance_mean_iou": field["mean_iou"],
                            "field_one_to_one_mean_iou": field["one_to_one_mean_iou"],
                            "field_pixel_iou": m["pixel"]["field"]["iou"], "mean_dice": m["pixel"]["mean"]["dice"],
                            "n_truth": field["n_truth"], "n_pred": field["n_pred"]}
        rows.append(result)
        print(json.dumps(result), flush=True)
    means = {metric: {k: float(np.mean([r[k][metric] for r in rows])) for k in ("model", "threshold", "everything")}
             for metric in ("field_instance_mean_iou", "field_one_to_one_mean_iou")}
    print(json.dumps({f"mean_{metric}": m for metric, m in means.items()}))
    (out / "eval.json").write_text(json.dumps({"model": args.model, "scenes": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    main()
