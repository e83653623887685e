"""GeoSeg: segment what a text query asks for in a scene, training-free (or score a folder of items).

    python jobs/geoseg.py SCENE --query "the largest field" --out DIR [--grounder DIR --clip DIR
        --points DIR --sam3 DIR | --tiny DIR] [--box x1,y1,x2,y2] [--text-route field-model]
        [--device cuda --dtype bfloat16 --max-new-tokens 96]
    python jobs/geoseg.py --bench ITEMS --out DIR [models...] [--ablations full,no_refine,...] [--judge DIR]
    python jobs/geoseg.py --aoi AOI --catalog CATALOG --query Q --out DIR [models...] [--num-actors 2]
    python jobs/geoseg.py --aoi AOI --query fields --fields-run MAP_RUN --out DIR

SCENE is a local path or an s3:// COG. One query writes DIR/mask.tif, mask.geojson, mask.gpkg,
overlay.png and result.json (see magseg_ray.geoseg.outputs); an empty mask has its reason in
result.json. --bench runs every item of ITEMS (made by jobs/make_geoseg_bench.py) through each
ablation as a Ray Data job and writes DIR/metrics.json, items.jsonl and table.png (with --judge,
an MLLM judge's scores and judge_table.png too). --aoi answers the query over every scene the AOI
touches as a Ray Data job on map_region's chip stream (magseg_ray.geoseg.aoi): DIR/fields/
(GeoParquet), fields.gpkg (query, phrase, route, score per object), masks/, summary.json,
failures.json; rerunning resumes, and a run with failed chips is partial (exit 3). Every model
loads from a local folder (README: "GeoSeg's folders"), on --device in --dtype (default: the GPU
in bfloat16 when there is one, else the CPU in float32); nothing is downloaded. Exit status 2 on
bad input, 3 for a partial --aoi map, 130 when an --aoi run is interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from magseg_ray.chips.radiometry import ReadFlags
from magseg_ray.cluster import RaySettings, add_ray_arguments
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import ConfigError, MagsegError, bad_input_exit
from magseg_ray.geoseg.aoi import AoiConfig
from magseg_ray.geoseg.config import GeoSegConfig
from magseg_ray.geoseg.run import ModelsConfig

PARTIAL = 3
"""Exit status of an --aoi run that wrote a partial map (as jobs/map_region.py)."""
INTERRUPTED = 130
"""Exit status of an --aoi run stopped by Ctrl-C (finished chips are kept: rerun to resume)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scene", nargs="?", help="scene GeoTIFF/COG (local path or s3://)")
    p.add_argument("--query", help="what to segment, e.g. 'the pond next to the farmstead'")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--box", help="x1,y1,x2,y2 in scene pixels: skip grounding and segment this box")
    p.add_argument("--bench", help="folder of benchmark items (instead of SCENE --query)")
    p.add_argument("--ablations", default="full,no_refine,points_only,text_only",
                   help="--bench: ablation rows to run (default: all four)")
    p.add_argument("--num-actors", type=int, default=1, help="--bench: model actors (default: 1)")
    p.add_argument("--cpus-per-actor", type=float, default=0.5, help="--bench: Ray CPUs per actor (default: 0.5)")
    p.add_argument("--box-source", choices=("grounder", "truth"), default="grounder",
                   help="--bench: boxes from the grounder, or the truth boxes (an oracle: segmentation alone)")
    p.add_argument("--judge", help="--bench: judge checkpoint folder (any grounder kind) scoring every mask")
    add_ray_arguments(p)  # --bench and --aoi run on Ray
    add_arguments(p, AoiConfig, skip=("query", "out", "num_actors", "cpus_per_actor"))
    add_arguments(p, ModelsConfig)
    add_arguments(p, GeoSegConfig)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        models, config = from_arguments(ModelsConfig, args), from_arguments(GeoSegConfig, args)
        if args.bench:
            from magseg_ray.geoseg.bench import BenchConfig, run_bench

            bench = BenchConfig(args.bench, args.out, args.ablations.split(","), args.num_actors,
                                args.box_source, args.cpus_per_actor, args.judge)
            log_file = None if args.verbose else f"{args.out}/logs/ray.log"
            summary = run_bench(bench, models, config, RaySettings(address=args.address, log_file=log_file))
            print(json.dumps({k: summary[k] for k in ("levels", "judge")}))
            return 0
        if args.aoi:
            if args.scene:
                raise ConfigError("give SCENE or --aoi, not both")
            return query_aoi(args, models, config)
        if not args.scene or args.query is None:
            raise ConfigError("give SCENE and --query (or --bench ITEMS)")
        record = query_scene(args, models, config)
    except MagsegError as e:
        return bad_input_exit(e)
    print(json.dumps({k: record[k] for k in ("query", "phrase", "case", "pixels", "reason", "seconds")}))
    return 0


def query_aoi(args, models: ModelsConfig, config: GeoSegConfig) -> int:
    from magseg_ray.cluster import RaySettings, ray_session
    from magseg_ray.geoseg.aoi import answer_from_fields, plan_query
    from magseg_ray.map_region import interrupted_note, run_map_region
    from magseg_ray.run_files import ray_log_file
    from magseg_ray.scenes.store import ObjectStore

    aoi, store = from_arguments(AoiConfig, args), ObjectStore.from_env()
    if aoi.fields_run:
        summary = answer_from_fields(aoi, store)
    else:
        planned = plan_query(aoi, models, config, store)  # bad query, AOI or catalog: fail before Ray
        try:
            log_file = None if args.verbose else ray_log_file(aoi.out)
            with ray_session(RaySettings(address=args.address, gpus=aoi.use_gpu, log_file=log_file)):
                summary = run_map_region(planned, store)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {interrupted_note(planned, store)}", file=sys.stderr, flush=True)
            return INTERRUPTED
    print(json.dumps(summary))
    return 0 if summary["status"] == "complete" else PARTIAL


def query_scene(args, models: ModelsConfig, config: GeoSegConfig) -> dict:
    from magseg_ray.geoseg.grounder import check_query
    from magseg_ray.geoseg.outputs import read_scene, write_result
    from magseg_ray.geoseg.run import build_pipeline, parse_box
    from magseg_ray.scenes.store import ObjectStore

    query, box = check_query(args.query), parse_box(args.box)
    read = from_arguments(ReadFlags, args).read_config()
    scene = read_scene(args.scene, ObjectStore.from_env(), read=read)
    pipeline = build_pipeline(models, config, scene)
    result = pipeline.segment(scene.image, query, box=box)
    return write_result(args.out, scene, result, query)


if __name__ == "__main__":
    sys.exit(main())
