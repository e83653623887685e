"""R-RLE against a Text4Seg-style encoding on real field labels: round trips and tokens per patch.

    python benchmarks/codec.py [--labels DIR] [--patch 32] [--resolution 0.5]

Over every whole patch of every ``*.labels.tif`` instance raster in DIR (default: the shared
naip-fields scenes, else the repo's test sample), classes are derived with schema ``fields3`` at
scene level, then each patch is encoded, decoded strictly and compared (exact round-trip rate),
and tokenized with the project tokenizer, as is the Text4Seg-style text of the same patch (the
named baseline). Prints one JSON line; ``token_ratio`` is baseline mean / R-RLE mean.

``--resolution M`` rasterises each scene's ``*.fields.gpkg`` polygons (column ``field_id``) at M
metres over the labels' extent instead of reading the raster, e.g. 0.5 for the tokens per patch
of 0.5 m imagery from the 1 m scenes. ``rrle_chars_mean`` is a tokenizer-free upper bound for
tokenizers that split digits (Gemma3's): at most one token per character.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from rasterio.transform import from_origin

from magseg_ray.masks.schemas import classes_from_instances
from magseg_ray.model.tokenizer import build_tokenizer
from magseg_ray.prompt import prompt_corpus
from magseg_ray.rle.codec import decode, encode, encode_text4seg

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [ROOT.parent / "shared" / "data" / "naip-fields", ROOT / "tests" / "data" / "naip"]


def instances(path: Path, resolution: float | None) -> np.ndarray:
    """The instance raster at ``path``, or its scene's field polygons rasterised at ``resolution`` m."""
    with rasterio.open(path) as src:
        if resolution is None:
            return src.read(1)
        bounds, crs = src.bounds, src.crs
    fields = gpd.read_file(path.with_name(path.name.replace(".labels.tif", ".fields.gpkg"))).to_crs(crs)
    shape = (round((bounds.top - bounds.bottom) / resolution), round((bounds.right - bounds.left) / resolution))
    transform = from_origin(bounds.left, bounds.top, resolution, resolution)
    return features.rasterize(zip(fields.geometry, fields["field_id"].astype("int64")), out_shape=shape,
                              transform=transform, fill=0, dtype="int32")


def patches(labels_dir: Path, size: int, resolution: float | None = None):
    for path in sorted(labels_dir.glob("*.labels.tif")):
        classes = classes_from_instances(instances(path, resolution), "fields3")
        h, w = (s - s % size for s in classes.shape)
        for y in range(0, h, size):
            for x in range(0, w, size):
                yield classes[y : y + size, x : x + size]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, default=next((d for d in DEFAULT_DIRS if d.is_dir()), None),
                   help="folder of *.labels.tif instance rasters")
    p.add_argument("--patch", type=int, default=32, help="patch side in pixels (default 32)")
    p.add_argument("--resolution", type=float, default=None,
                   help="rasterise the *.fields.gpkg polygons at this many metres per pixel (default: read the labels)")
    args = p.parse_args(argv)
    tokenizer = build_tokenizer(prompt_corpus())

    t0 = time.perf_counter()
    masks = list(patches(args.labels, args.patch, args.resolution))
    rrle = [encode(m, "fields3") for m in masks]
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = sum(np.array_equal(decode(t, args.patch, args.patch, "fields3", strict=True)[0], m)
                for t, m in zip(rrle, masks))
    t_decode = time.perf_counter() - t0
    t4s = [encode_text4seg(m, "fields3") for m in masks]
    n_rrle = np.array([len(ids) for ids in tokenizer(rrle, add_special_tokens=False)["input_ids"]])
    n_t4s = np.array([len(ids) for ids in tokenizer(t4s, add_special_tokens=False)["input_ids"]])
    result = {
        "benchmark": "codec",
        "baseline": "text4seg",
        "labels": str(args.labels),
        "patch": args.patch,
        "resolution_m": args.resolution,
        "patches": len(masks),
        "roundtrip_exact_rate": exact / len(masks),
        "rrle_tokens_mean": round(float(n_rrle.mean()), 2),
        "rrle_tokens_p95": float(np.percentile(n_rrle, 95)),
        "rrle_tokens_max": int(n_rrle.max()),
        "rrle_chars_mean": round(float(np.mean([len(t) for t in rrle])), 2),
        "text4seg_tokens_mean": round(float(n_t4s.mean()), 2),
        "text4seg_tokens_p95": float(np.percentile(n_t4s, 95)),
        "token_ratio": round(float(n_t4s.mean() / n_rrle.mean()), 2),
        "encode_us_per_patch": round(1e6 * t_encode / len(masks), 1),
        "decode_us_per_patch": round(1e6 * t_decode / len(masks), 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
