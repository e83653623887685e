"""Serve on-demand field tiles with Ray Serve: class overlays, field GeoJSON and a /map viewer.

    python jobs/serve.py --model PATH                             # demo scenes, http://127.0.0.1:8000/map
    python jobs/serve.py --catalog s3://bucket/catalog.parquet --model PATH --maps s3://bucket/maps/kh \\
        --host 0.0.0.0 --port 8000 --max-replicas 4 --gpus-per-replica 1
    serve run magseg_ray.serve:app catalog=... model=...           # the same app, Ray's CLI

Routes: /tiles/{z}/{x}/{y}.png, /tiles/{z}/{x}/{y}.geojson, /imagery/{z}/{x}/{y}.png,
/tilejson.json, /map, /healthz, POST /segment (GeoSeg; the --geoseg-* flags) (see
magseg_ray.serve.deployment). Runs until interrupted (or --seconds).
Every flag but --host, --port, --address and --seconds is a setting of
magseg_ray.serve.settings.ServeSettings, the one place that sizes the server.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.config import add_arguments, from_arguments
from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.serve.settings import ServeSettings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, ServeSettings)
    parser.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default 0: run until interrupted)")
    args = parser.parse_args(argv)
    try:
        settings = from_arguments(ServeSettings, args)
        from magseg_ray.model.checkpoint import check_checkpoint_dir

        check_checkpoint_dir(settings.model_dir())  # a bad model fails before Ray starts
        with ray_session(RaySettings(address=args.address, gpus=settings.gpus_per_replica,
                                      gpu_flags="--gpus-per-replica")):  # sets Ray's environment, then imports it
            from ray import serve

            from magseg_ray.serve import app

            application = app({k: getattr(settings, k) for k in settings.__dataclass_fields__})
            serve.start(http_options={"host": args.host, "port": args.port})
            try:
                serve.run(application, name="tiles", route_prefix="/")
                url = f"http://{args.host}:{args.port}"
                print(json.dumps({"url": url, "map": f"{url}/map", "tilejson": f"{url}/tilejson.json"}), flush=True)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
                while time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                serve.shutdown()
    except MagsegError as e:
        return bad_input_exit(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
