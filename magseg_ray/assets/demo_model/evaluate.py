"""How the model card's table is measured: a model against the two baselines on the held-out scenes.

    python magseg_ray/assets/demo_model/evaluate.py --data ../shared/data/naip-fields --out DIR [--model M]

Maps each validation scene (``split_of(id, 0.2) == "val"``, the scenes SFT held out) **whole** with
``jobs/map_region.py`` (the AOI is each scene's bounds plus 16 m; ``--half-side M`` maps only a
square of side 2M metres at each scene's centre instead), writes both baselines
(``jobs/baseline.py``) on exactly the mapped pixels, and scores, against ``<scene>.fields.gpkg``
with the rules of ``jobs/evaluate.py`` (``--make-valid``; truth blanked where a map has no data):

- ``model``: the map's class raster (``masks/<scene>.tif``), its fields made as the map's fields
  step makes them (cores deeper than the card's ``field_seed_px``, then the card's field rules:
  the edge split on the scene's image, minimum size, holes, maximum size);
- ``model_fields``: the map's polygons (``fields.gpkg``) on the same pixel grid, on the run's AOI;
- ``threshold`` and ``everything``: the baselines' class rasters, each interior component a field;
- ``threshold_cores`` (only for a card with ``field_seed_px``): the threshold's class raster through
  the model's fields step, so that the model is compared with the better of the two.

Scores of each: field instance mean IoU (majority-overlap matching), one-to-one mean IoU (each truth
field by its best single piece), Fields of The World's object precision, recall and F1 (one-to-one
matches at IoU > 0.5; over all scenes, from the summed counts), field pixel IoU, pieces predicted.
Prints one JSON line per scene, a table, and last one JSON line that sums up the run (the line to
compare models by); writes ``eval.json``. Rerunning with the same ``--out`` resumes the map.

``--split train`` maps four training scenes instead (every sixth by id, with ``--half-side``
usually), so that a setting such as the bias or the core depth is chosen without looking at the
held-out scenes; ``--seed-px`` maps and scores at another core depth than the model card's.

``--ceiling STEPS`` also scores what a perfect decoder could get from the model's image tokens: the
tower and a per-pixel linear head on the crop tokens are trained for STEPS steps on the training
scenes (as ``jobs/pretrain_vision.py --crop-scale 1 --sub-cells 4 --boundary-width 6`` does, chips
left out), the head's class map of every mapped pixel is scored like the model's, and a pixel is
written as boundary where the head gives the boundary class more than a threshold. The threshold is
chosen on the centre 400 px squares of ten training scenes, never on the held-out ones.
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
import torch
from rasterio.windows import Window

from magseg_ray.chips.labels import labelled_scenes
from magseg_ray.chips.pipeline import split_of
from magseg_ray.eval.align import load_pair, run_aoi, run_field_rules
from magseg_ray.eval.baselines import baseline_classes
from magseg_ray.errors import ConfigError
from magseg_ray.eval.metrics import evaluate_masks
from magseg_ray.masks.instances import resolve_seed_px
from magseg_ray.model.card import ModelPrompt, read_model_prompt
from magseg_ray.model.checkpoint import DEMO_MODEL
from magseg_ray.scenes.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]


MAPS = ("model", "model_fields", "threshold", "threshold_cores", "everything", "ceiling")
"""Maps scored per scene, in table order (``threshold_cores`` only for a card with ``field_seed_px``,
``ceiling`` only with ``--ceiling``)."""
MEANS = ("field_instance_mean_iou", "field_one_to_one_mean_iou", "field_pixel_iou", "mean_dice")
"""Scores averaged over scenes; object scores are pooled from the summed counts instead."""


def _score(path: Path, truth: Path, aoi=None, grid_like: Path | None = None, seed_px: float = 0.0, rules=None,
           image=None) -> dict:
    pair = load_pair(path, truth, "fields3", make_valid=True, aoi=aoi, grid_like=grid_like, seed_px=seed_px,
                     rules=rules, image=image)
    m = evaluate_masks(pair.pred_classes, pair.truth_classes, "fields3", pair.pred_instances, pair.truth_instances)
    field, objects = m["instance"]["field"], m["object"]["field"]
    return {"field_instance_mean_iou": field["mean_iou"], "field_one_to_one_mean_iou": field["one_to_one_mean_iou"],
            "object_precision": objects["precision"], "object_recall": objects["recall"], "object_f1": objects["f1"],
            "object_tp": objects["tp"], "object_fp": objects["fp"], "object_fn": objects["fn"],
            "field_pixel_iou": m["pixel"]["field"]["iou"], "mean_dice": m["pixel"]["mean"]["dice"],
            "n_truth": field["n_truth"], "n_pred": field["n_pred"]}


def _pooled(rows: list[dict], name: str) -> dict:
    """Means over scenes of :data:`MEANS`, and object scores from the counts summed over scenes."""
    out = {k: float(np.mean([r[name][k] for r in rows])) for k in MEANS}
    tp, fp, fn = (sum(r[name][f"object_{k}"] for r in rows) for k in ("tp", "fp", "fn"))
    out.update(object_precision=tp / (tp + fp) if tp + fp else None, object_recall=tp / (tp + fn) if tp + fn else None,
               object_f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
               object_tp=tp, object_fp=fp, object_fn=fn, n_pred=sum(r[name]["n_pred"] for r in rows))
    return out


def _table(means: dict, n_truth: int) -> str:
    """The means as a Markdown table, one row per map."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["| map | instance mean IoU | one-to-one IoU | object P | object R | object F1 | pieces "
             f"({n_truth} fields) | field pixel IoU |", "|---|---|---|---|---|---|---|---|"]
    for name, m in means.items():
        lines.append(f"| {name} | {f(m['field_instance_mean_iou'])} | {f(m['field_one_to_one_mean_iou'])} | "
                     f"{f(m['object_precision'])} | {f(m['object_recall'])} | {f(m['object_f1'])} | {m['n_pred']} | "
                     f"{f(m['field_pixel_iou'])} |")
    return "\n".join(lines)


class _Ceiling:
    """A per-pixel linear head on the crop tokens of a model (see the module doc)."""

    THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 1.0)  # 1.0: the head's argmax alone

    def __init__(self, model_dir: str, scenes, steps: int):
        import math
        from functools import partial

        from magseg_ray.model.checkpoint import load_model
        from magseg_ray.train.sft import lr_factor
        from magseg_ray.train.vision import SceneSampler, read_labelled, token_losses

        torch.manual_seed(0)
        self.model, self.processor = load_model(model_dir)
        self.grid = grid = math.isqrt(self.model.config.mm_tokens_per_image)
        train = SceneSampler(read_labelled(scenes, 6), 256, 32, 32, grid, 4)
        hidden = self.model.config.text_config.hidden_size
        self.head, where = torch.nn.Linear(hidden, 16 * 3), torch.nn.Linear(hidden, 2 * grid)
        params = [*self.model.model.vision_tower.parameters(), *self.model.model.multi_modal_projector.parameters(),
                  *self.head.parameters(), *where.parameters()]
        optimizer = torch.optim.AdamW(params, lr=5e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=max(steps // 20, 1), total=steps))
        rng = np.random.default_rng(0)
        self.model.train()
        for step in range(1, steps + 1):
            images, targets = train.sample(rng, 32)
            # the crops only: a mapped pixel is read from its patch's crop
            loss, *_ = token_losses(self._features(images[1::2]), targets[1::2], self.head, where)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            if step % 100 == 0 or step == steps:
                print(f"[ceiling] step {step}/{steps} loss {loss.item():.4f}", flush=True)
        self.model.eval()
        self.threshold, self.tuning = 1.0, {}

    def _features(self, images):
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return self.model.model.get_image_features(pixels).pooler_output

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """``H x W x 3`` class probabilities of every pixel, each 32 px patch read from its own crop."""
        h, w = image.shape[:2]
        g, out = self.grid, np.zeros((h, w, 3), np.float32)
        tiles = [(y, x) for y in range(0, h, 32) for x in range(0, w, 32)]
        for i in range(0, len(tiles), 64):
            crops = []
            for y, x in tiles[i : i + 64]:
                crop = np.zeros((32, 32, 3), np.uint8)
                part = image[y : y + 32, x : x + 32]
                crop[: part.shape[0], : part.shape[1]] = part
                crops.append(crop)
            with torch.no_grad():
                probs = self.head(self._features(crops)).unflatten(-1, (16, 3)).softmax(-1)
            probs = probs.reshape(-1, g, g, 4, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, 32, 32, 3).numpy()
            for (y, x), p in zip(tiles[i : i + 64], probs):
                out[y : y + 32, x : x + 32] = p[: h - y, : w - x]
        return out

    @staticmethod
    def classes_of(probs: np.ndarray, threshold: float) -> np.ndarray:
        """Class mask: the most probable class, boundary wherever its probability exceeds ``threshold``."""
        classes = probs.argmax(-1).astype(np.uint8)
        classes[probs[..., 2] > threshold] = 2
        return classes

    def classes(self, image: np.ndarray) -> np.ndarray:
        return self.classes_of(self.probabilities(image), self.threshold)


def _ceiling(model_dir: str, data: Path, scenes, steps: int, out: Path) -> _Ceiling:
    """Train the head, then choose its boundary threshold on ten training scenes' centre squares."""
    train = scenes[[split_of(s, 0.2) == "train" for s in scenes["id"]]]
    ceiling = _Ceiling(model_dir, train, steps)
    squares = []
    for row in train.iloc[:10].itertuples():
        with rasterio.open(data / f"{row.id}.tif") as src:
            window = Window((src.width - 400) // 2, (src.height - 400) // 2, 400, 400)
            image = np.moveaxis(src.read([1, 2, 3], window=window), 0, -1)
            profile = dict(driver="GTiff", width=400, height=400, count=1, dtype="uint8", crs=src.crs,
                           transform=src.window_transform(window))
        squares.append((row.id, ceiling.probabilities(image), profile))
    for threshold in _Ceiling.THRESHOLDS:
        scores = []
        for scene, probs, profile in squares:
            path = out / f"{scene}.ceiling_train.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(_Ceiling.classes_of(probs, threshold), 1)
            scores.append(_score(path, data / f"{scene}.fields.gpkg")["field_instance_mean_iou"])
        ceiling.tuning[str(threshold)] = float(np.mean(scores))
        print(json.dumps({"ceiling_threshold": threshold, "training_squares_instance_iou": np.mean(scores)}), flush=True)
    ceiling.threshold = float(max(ceiling.tuning, key=ceiling.tuning.get))
    return ceiling


MARGIN_M = 16.0
"""Metres added around a whole scene's bounds for its AOI, so that no edge pixel falls outside it."""


def _aoi(val, half_side: float) -> gpd.GeoSeries:
    """The mapped area (EPSG:4326): each scene whole, or a square of side ``2 * half_side`` m at its centre."""
    shapes = []
    for row in val.itertuples():
        x0, y0, x1, y1 = row.native_bounds
        if half_side > 0:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            x0, y0, x1, y1 = cx - half_side, cy - half_side, cx + half_side, cy + half_side
        else:
            x0, y0, x1, y1 = x0 - MARGIN_M, y0 - MARGIN_M, x1 + MARGIN_M, y1 + MARGIN_M
        shapes.append(gpd.GeoSeries([shapely.box(x0, y0, x1, y1)], crs=row.crs).to_crs(4326).iloc[0])
    return gpd.GeoSeries(shapes, crs=4326)


TRAIN_EVERY, TRAIN_SCENES = 6, 4
"""``--split train`` maps every ``TRAIN_EVERY``-th training scene by id, ``TRAIN_SCENES`` of them."""


def _scenes_of(scenes, split: str):
    """The held-out scenes (``val``), or a few training scenes (``train``)."""
    chosen = scenes[[split_of(s, 0.2) == split for s in scenes["id"]]]
    return chosen if split == "val" else chosen.sort_values("id").iloc[::TRAIN_EVERY][:TRAIN_SCENES]


def _scene(row, data: Path, out: Path, names: tuple, ceiling, aoi, seed_px: float) -> dict:
    """Every map of one scene, scored; the baselines (and the ceiling) written on the model's mapped pixels."""
    pred, truth = out / "map" / "masks" / f"{row.id}.tif", data / f"{row.id}.fields.gpkg"
    with rasterio.open(pred) as src:
        covered, profile = src.read(1) != 255, src.profile
    with rasterio.open(data / f"{row.id}.tif") as src:
        image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    result = {"scene": row.id}
    for name in names:
        if name == "model":
            result[name] = _score(pred, truth, seed_px=seed_px, rules=run_field_rules(pred), image=image)
            continue
        if name == "threshold_cores":
            result[name] = _score(out / f"{row.id}.threshold.tif", truth, seed_px=seed_px, rules=run_field_rules(pred),
                                  image=image)
            continue
        if name == "model_fields":
            result[name] = _score(out / "map" / "fields.gpkg", truth, aoi, grid_like=pred)
            continue
        path = out / f"{row.id}.{name}.tif"
        classes = ceiling.classes(image) if name == "ceiling" else baseline_classes(image, name)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.where(covered, classes, 255).astype(np.uint8), 1)
        result[name] = _score(path, truth)
    result["n_truth"] = result["model"]["n_truth"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of naip-fields scenes")
    p.add_argument("--out", required=True, help="output folder (a fresh one, or this script's earlier one to resume)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="model folder (default: the demo model)")
    p.add_argument("--half-side", type=float, default=0.0, metavar="M",
                   help="map only a square of side 2M metres at each scene's centre (default 0: whole scenes)")
    p.add_argument("--ceiling", type=int, default=0, metavar="STEPS",
                   help="also score a per-pixel head on the model's image tokens, trained STEPS steps (see above)")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="val (default): the held-out scenes; train: four training scenes (every sixth by id), to "
                   "choose settings without looking at the held-out ones")
    p.add_argument("--seed-px", type=float, default=-1.0,
                   help="core depth of the fields step, for the map and its scores (default -1: the model card's)")
    args = p.parse_args()
    if args.ceiling < 0:
        p.error(f"--ceiling {args.ceiling}: the number of training steps must be >= 0")
    if args.half_side < 0:
        p.error(f"--half-side {args.half_side}: must be >= 0 (0: whole scenes)")
    try:
        seed_px = resolve_seed_px(args.seed_px, (read_model_prompt(args.model) or ModelPrompt()).field_seed_px)
    except ConfigError as e:
        p.error(f"--seed-px: {e}")
    data, out = Path(args.data), Path(args.out)
    scenes = labelled_scenes(load_catalog(data).scenes, where=repr(str(data)))
    val = _scenes_of(scenes, args.split)
    out.mkdir(parents=True, exist_ok=True)
    aoi_path = out / f"{args.split}_aoi.geojson"
    aoi_path.write_text(_aoi(val, args.half_side).to_json())
    subprocess.run([sys.executable, str(ROOT / "jobs/map_region.py"), "--aoi", str(aoi_path), "--catalog", str(data),
                    "--model", args.model, "--out", str(out / "map"), "--cpus-per-actor", "1",
                    "--seed-px", str(seed_px)], check=True)
    aoi, _ = run_aoi(out / "map" / "fields.gpkg")
    ceiling = _ceiling(args.model, data, scenes, args.ceiling, out) if args.ceiling else None
    names = [n for n in MAPS if (n != "ceiling" or ceiling) and (n != "threshold_cores" or seed_px)]
    rows = []
    for row in val.itertuples():
        rows.append(_scene(row, data, out, names, ceiling, aoi, seed_px))
        print(json.dumps(rows[-1]), flush=True)
    means = {name: _pooled(rows, name) for name in names}
    area = f"squares of {2 * args.half_side:g} m" if args.half_side else "whole scenes"
    n_truth = sum(r["n_truth"] for r in rows)
    print(f"\n{len(rows)} {'held-out' if args.split == 'val' else 'training'} scenes, {area}, core depth {seed_px:g}; IoUs are means over scenes, object scores pooled over them\n")
    print(_table(means, n_truth) + "\n")
    run = json.loads((out / "map" / "run.json").read_text())
    summary = {"model": args.model, "model_fingerprint": run["model"], "split": args.split, "seed_px": seed_px, "area": area,
               "scenes": [r["scene"] for r in rows], "n_truth": n_truth, "mean": means}
    if ceiling:
        summary["ceiling"] = {"steps": args.ceiling, "boundary_threshold": ceiling.threshold,
                              "training_squares": ceiling.tuning}
    (out / "eval.json").write_text(json.dumps({**summary, "per_scene": rows}, indent=1))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
