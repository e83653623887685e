"""How the model card's table was measured: the model against the two baselines on held-out scenes.

    python magseg_ray/assets/demo_model/evaluate.py --data ../shared/data/naip-fields --out /tmp/eval

Maps a 400 m square at the centre of each validation scene (``split_of(id, 0.2) == "val"``, the
scenes SFT held out) with ``jobs/map_region.py``, writes both baselines on exactly the mapped
pixels, and scores all three with the rules of ``jobs/evaluate.py`` (truth blanked where a map has
no data; ``--make-valid``). Prints one JSON line per scene and the means; writes ``eval.json``.

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

from magseg_ray.chips.pipeline import split_of
from magseg_ray.eval.align import load_pair
from magseg_ray.eval.baselines import baseline_classes
from magseg_ray.eval.metrics import evaluate_masks
from magseg_ray.model.checkpoint import DEMO_MODEL
from magseg_ray.scenes.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[3]


def _score(path: Path, truth: Path) -> dict:
    pair = load_pair(path, truth, "fields3", make_valid=True)
    m = evaluate_masks(pair.pred_classes, pair.truth_classes, "fields3", pair.pred_instances, pair.truth_instances)
    field = m["instance"]["field"]
    return {"field_instance_mean_iou": field["mean_iou"], "field_one_to_one_mean_iou": field["one_to_one_mean_iou"],
            "field_pixel_iou": m["pixel"]["field"]["iou"], "mean_dice": m["pixel"]["mean"]["dice"],
            "n_truth": field["n_truth"], "n_pred": field["n_pred"]}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of naip-fields scenes")
    p.add_argument("--out", required=True, help="output folder (a fresh one)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="model folder (default: the demo model)")
    p.add_argument("--half-side", type=float, default=200.0, help="half the square's side, in metres")
    p.add_argument("--ceiling", type=int, default=0, metavar="STEPS",
                   help="also score a per-pixel head on the model's image tokens, trained STEPS steps (see above)")
    args = p.parse_args()
    if args.ceiling < 0:
        p.error(f"--ceiling {args.ceiling}: the number of training steps must be >= 0")
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
    ceiling = _ceiling(args.model, data, scenes, args.ceiling, out) if args.ceiling else None
    names = ("model", "threshold", "everything") + (("ceiling",) if ceiling else ())
    rows = []
    for row in val.itertuples():
        pred = out / "map" / "masks" / f"{row.id}.tif"
        with rasterio.open(pred) as src:
            covered, profile = src.read(1) != 255, src.profile
        with rasterio.open(data / f"{row.id}.tif") as src:
            image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        result = {"scene": row.id}
        for name in names:
            path = pred
            if name != "model":
                path = out / f"{row.id}.{name}.tif"
                classes = ceiling.classes(image) if name == "ceiling" else baseline_classes(image, name)
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(np.where(covered, classes, 255).astype(np.uint8), 1)
            result[name] = _score(path, data / f"{row.id}.fields.gpkg")
        rows.append(result)
        print(json.dumps(result), flush=True)
    means = {metric: {k: float(np.mean([r[k][metric] for r in rows])) for k in names}
             for metric in ("field_instance_mean_iou", "field_one_to_one_mean_iou")}
    print(json.dumps({f"mean_{metric}": m for metric, m in means.items()}))
    summary = {"model": args.model, "scenes": rows, "mean": means}
    if ceiling:
        summary["ceiling"] = {"steps": args.ceiling, "boundary_threshold": ceiling.threshold,
                              "training_squares": ceiling.tuning}
    (out / "eval.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
