"""Mapping input pipeline (catalog + AOI -> chips by range requests) against raw ranged GETs.

    python benchmarks/streaming.py [--scenes DIR] [--chip 512] [--repeat 1]

Uploads the scene images in DIR (default: the shared naip-fields scenes, else the repo's test
sample) to a local S3 server on 127.0.0.1, catalogues them from S3, and streams every chip of every
scene through pipeline 1 on a local Ray (2 CPUs). The named baseline, ``raw_ranged_gets``, fetches
the bytes of the same COG tiles the chips cover with plain sequential ranged GETs (boto3, one
connection, no decoding): the transfer limit of this server and client. Prints one JSON line;
``mb_per_s_ratio`` is pipeline MB/s (bytes the server sent) over baseline MB/s; ``chips_per_s_ratio``
is the time the baseline took for the chips' tiles over the pipeline's (reading more bytes than the
tiles does not raise it); ``pipeline_requests_per_chip`` counts every request the server answered.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import rasterio
import shapely

from magseg_ray.chips.pipeline import failures, mapping_chips
from magseg_ray.chips.windows import ChipConfig, chip_windows
from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.scenes.local_s3 import LocalS3

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [ROOT.parent / "shared" / "data" / "naip-fields", ROOT / "tests" / "data" / "naip"]


def tile_ranges(path: Path, task) -> list[tuple[int, int]]:
    """(offset, size) of the full-resolution COG tiles under a chip window."""
    with rasterio.open(path) as src:
        th, tw = src.block_shapes[0]
        rows = range(task.row_off // th, min(task.row_off + task.size, src.height) // th + 1)
        cols = range(task.col_off // tw, min(task.col_off + task.size, src.width) // tw + 1)
        out = []
        for r in rows:
            for c in cols:
                if r * th < src.height and c * tw < src.width:
                    off = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1)
                    size = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1)
                    out.append((int(off), int(size)))
        return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=Path, default=next((d for d in DEFAULT_DIRS if d.is_dir()), None))
    p.add_argument("--chip", type=int, default=512, help="chip side in pixels (default 512)")
    args = p.parse_args(argv)
    images = sorted(f for f in args.scenes.glob("*.tif") if f.name.count(".") == 1)
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3, ray_session(RaySettings(num_cpus=2)):
        for f in images:
            shutil.copy(f, tmp)
        root = s3.upload(tmp, "bench", "scenes")
        scenes = load_catalog(root, s3.store).scenes
        aoi = shapely.union_all(list(scenes.geometry))
        chip = ChipConfig(args.chip, 0)

        sent, asked, t0 = s3.sent_bytes, s3.requests, time.perf_counter()
        n_chips = n_patches = 0
        records = []
        for r in mapping_chips(scenes, aoi, chip, store=s3.store).iter_rows():
            n_chips += 1
            n_patches += len(r["patches"])
            records.append({"chip_id": r["chip_id"], "uri": r["uri"], "error": r["error"]})
        t_pipe, pipe_bytes, pipe_requests = time.perf_counter() - t0, s3.sent_bytes - sent, s3.requests - asked

        client = s3.client()
        ranges = [(t.scene_id, rng) for t in chip_windows(scenes, aoi, chip)
                  for rng in tile_ranges(Path(tmp) / f"{t.scene_id}.tif", t)]
        sent, t0 = s3.sent_bytes, time.perf_counter()
        for scene_id, (off, size) in ranges:
            client.get_object(Bucket="bench", Key=f"scenes/{scene_id}.tif", Range=f"bytes={off}-{off + size - 1}")["Body"].read()
        t_raw, raw_bytes = time.perf_counter() - t0, s3.sent_bytes - sent

    mb = 1e6
    result = {
        "benchmark": "streaming",
        "baseline": "raw_ranged_gets",
        "scenes": len(images),
        "chip": args.chip,
        "chips": n_chips,
        "patches": n_patches,
        "failures": len(failures(records)),
        "pipeline_s": round(t_pipe, 2),
        "pipeline_chips_per_s": round(n_chips / t_pipe, 2),
        "pipeline_mb": round(pipe_bytes / mb, 2),
        "pipeline_mb_per_s": round(pipe_bytes / mb / t_pipe, 2),
        "pipeline_requests_per_chip": round(pipe_requests / max(n_chips, 1), 2),
        "raw_gets": len(ranges),
        "raw_gets_per_chip": round(len(ranges) / max(n_chips, 1), 2),
        "raw_mb": round(raw_bytes / mb, 2),
        "raw_mb_per_s": round(raw_bytes / mb / t_raw, 2),
        "mb_per_s_ratio": round((pipe_bytes / t_pipe) / (raw_bytes / t_raw), 3),
        "chips_per_s_ratio": round(t_raw / t_pipe, 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
