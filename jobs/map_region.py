"""Map the fields of an area of interest: AOI -> chips -> model actors -> stitched map -> fields.

    python jobs/map_region.py                                  # bundled demo scenes, AOI and model
    python jobs/map_region.py --aoi cambodia.geojson --catalog s3://bucket/scenes --out s3://bucket/maps/kh
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/map_region.py --aoi ...

Rerunning the same command resumes: finished chips are skipped, failed ones retried. Outputs under
--out: fields/ (GeoParquet partitioned by grid cell, fiboa columns), fields.gpkg, masks/<scene>.tif,
summary.json, failures.json, preview.png. See magseg_ray.map_region.

Exit status: 0 a complete map; 3 a partial map (some chips failed: listed on stderr and in
failures.json, summary "status": "partial"); 2 bad input, or an output that cannot be written (disk
full: the file is named, finished chips are kept, rerun to resume); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.cluster import RaySettings, add_ray_arguments, ray_session
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.map_region import MapConfig, interrupted_note, plan, run_map_region
from magseg_ray.run_files import ray_log_file
from magseg_ray.scenes.store import ObjectStore

PARTIAL = 3
"""Exit status of a run that wrote a partial map (some chips failed)."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, MapConfig)
    add_ray_arguments(parser)
    args = parser.parse_args(argv)
    planned = None
    try:
        store = ObjectStore.from_env()
        planned = plan(from_arguments(MapConfig, args), store)  # bad AOI, catalog or model: fail before Ray
        log_file = None if args.verbose else ray_log_file(planned.config.out_root())
        with ray_session(RaySettings(address=args.address, gpus=planned.config.use_gpu, log_file=log_file)):
            summary = run_map_region(planned, store)
    except MagsegError as e:
        return bad_input_exit(e)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted_note(planned, store) if planned else 'nothing was written'}",
              file=sys.stderr, flush=True)
        return INTERRUPTED
    print(json.dumps(summary))
    return 0 if summary["status"] == "complete" else PARTIAL


if __name__ == "__main__":
    sys.exit(main())
