"""Tile server under load on loopback: cold vs cached tiles, and 503s (not timeouts) under overload.

    python benchmarks/serve.py [--model PATH] [--tiles 6] [--concurrency 2] [--overload 16] [--view 300]

Starts a private Ray (2 CPUs) and Serve on 127.0.0.1 with the bundled demo scenes and a model
(default: the offline ``tiny`` preset with a 128 px chip card and 8 answer tokens: its answers are
meaningless, its cost per patch is real), one replica with ``max_ongoing_requests=2`` and
``max_queued_requests=2``, then:

1. **cold** (the named baseline): ``--tiles`` distinct zoom-19 tiles over synth_900,
   ``--concurrency`` at a time; every chip under them is computed by the model;
2. **cached**: the same tiles again, their chips now in the replica's cache;
3. **overload**: ``--overload`` requests at once for tiles over synth_901 and the NAIP scene (not
   cached): the replica takes 2, the proxy queues 2, the rest must get 503 at once;
4. **view**: a second application with the default admission (``ServeSettings``), the cold tiles
   cached in it first, then ``--view`` requests for them ``--view-concurrency`` at a time (a browser
   map view's burst): every one should be answered 200;
5. **mixed**: on that application, ``--mixed-cold`` tiles it has not cached (``--mixed-cold-concurrency``
   in flight: chips the model must compute) while the same ``--view`` cached-tile requests run
   beside them at ``--view-concurrency``: status counts and p50/p95 of each kind, and
   ``cached_slowdown`` (mixed cached p50 / the view phase's p50, the named baseline of this phase):
   cached tiles must not wait behind cold ones.

Every request has a client timeout (``--timeout``), so the run ends by itself. Prints one JSON line:
p50/p95 latency (s) and requests/s of each phase, ``cached_speedup`` (cold p50 / cached p50), the
overload's counts of 200, 503 and timeouts and the slowest 503, and the mixed phase.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import morecantile
import numpy as np
import shapely

from magseg_ray.cluster import RaySettings, free_port, ray_session
from magseg_ray.map_region import DEMO_DIR
from magseg_ray.scenes.catalog import load_catalog

TMS = morecantile.tms.get("WebMercatorQuad")


def fetch(url: str, timeout: float) -> tuple[int, float]:
    """(HTTP status or 0 for a timeout/connection error, seconds)."""
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def tiles_in(footprint, z: int) -> list[str]:
    """``z/x/y`` of the tiles wholly inside a footprint (EPSG:4326), row by row."""
    west, south, east, north = footprint.bounds
    return [f"{t.z}/{t.x}/{t.y}" for t in TMS.tiles(west, south, east, north, [z])
            if footprint.contains(shapely.box(*TMS.bounds(t)))]


def phase(base: str, paths: list[str], concurrency: int, timeout: float, ends: list | None = None) -> dict:
    """``paths`` requested ``concurrency`` at a time; ``ends`` (if given) gets each request's end time."""
    start = time.perf_counter()

    def one(path: str) -> tuple[int, float]:
        result = fetch(f"{base}/tiles/{path}.png", timeout)
        if ends is not None:
            ends.append(time.perf_counter())
        return result

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, paths))
    wall = time.perf_counter() - start
    seconds = np.array([s for _, s in results])
    return {"ok": sum(status == 200 for status, _ in results), "http_503": sum(status == 503 for status, _ in results),
            "lost": sum(status == 0 for status, _ in results), "p50_s": round(float(np.percentile(seconds, 50)), 3),
            "p95_s": round(float(np.percentile(seconds, 95)), 3), "rps": round(len(paths) / wall, 3)}


def map_view(base: str, model: str, tiles: list[str], cold: list[str], args) -> dict:
    """A browser map view on a server with the default admission (``ServeSettings``): its tiles
    cached first, then ``--view`` requests for them, ``--view-concurrency`` in flight; then the same
    beside requests for the ``cold`` tiles (:func:`mixed`)."""
    from ray import serve

    from magseg_ray.serve import app
    from magseg_ray.serve.settings import ServeSettings

    serve.run(app({"catalog": str(DEMO_DIR / "scenes"), "model": model, "max_new_tokens": args.max_new_tokens,
                   "overlap": 32, "cpus_per_replica": 1.0}), name="view", route_prefix="/view")
    phase(f"{base}/view", tiles, 1, args.timeout)  # into the cache
    paths = [tiles[i % len(tiles)] for i in range(args.view)]
    d = ServeSettings()
    view = {"requests": args.view, "concurrency": args.view_concurrency, "max_ongoing_requests": d.max_ongoing_requests,
            "max_queued_requests": d.max_queued_requests, **phase(f"{base}/view", paths, args.view_concurrency, args.timeout)}
    return view, mixed(f"{base}/view", paths, cold, view["p50_s"], args)


def mixed(base: str, cached: list[str], cold: list[str], alone_p50: float, args) -> dict:
    """Cached-tile requests while cold tiles are in flight: both phases start together; ``overlap``
    is the share of cached requests that ended before the last cold one did."""
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        cold_run = pool.submit(lambda: (phase(base, cold, args.mixed_cold_concurrency, args.timeout), time.perf_counter()))
        ends = []
        cached_run = pool.submit(phase, base, cached, args.view_concurrency, args.timeout, ends)
        (cold_result, cold_end), cached_result = cold_run.result(), cached_run.result()
    overlap = sum(end <= cold_end for end in ends) / max(len(ends), 1)
    return {"cold": {"requests": len(cold), "concurrency": args.mixed_cold_concurrency, **cold_result},
            "cached": {"requests": len(cached), "concurrency": args.view_concurrency, **cached_result},
            "overlap": round(overlap, 3), "cold_wall_s": round(cold_end - started, 2),
            "baseline": "view_cached_p50", "cached_slowdown": round(cached_result["p50_s"] / max(alone_p50, 1e-6), 2)}


def tiny_model(root: Path) -> str:
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.presets import build_model
    from magseg_ray.model.card import ModelPrompt, write_model_prompt

    model, processor = build_model("tiny")
    path = save_model(model, processor, root / "tiny")
    write_model_prompt(path, ModelPrompt(chip_size=128))
    return str(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: the offline tiny preset, 128 px chips)")
    p.add_argument("--tiles", type=int, default=6, help="distinct tiles in the cold and cached phases")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight in the cold and cached phases")
    p.add_argument("--overload", type=int, default=16, help="requests sent at once in the overload phase")
    p.add_argument("--max-new-tokens", type=int, default=8, help="answer token budget per patch")
    p.add_argument("--timeout", type=float, default=300, help="client timeout per request, seconds")
    p.add_argument("--view", type=int, default=300, help="requests of the map-view phase (cached tiles, default admission)")
    p.add_argument("--view-concurrency", type=int, default=32, help="requests in flight in the map-view phase")
    p.add_argument("--mixed-cold", type=int, default=12, help="uncached tiles requested beside the cached ones (mixed phase)")
    p.add_argument("--mixed-cold-concurrency", type=int, default=4, help="uncached requests in flight (mixed phase)")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]  # other work on the machine shifts every latency alike
    scenes = load_catalog(DEMO_DIR / "scenes").scenes.set_index("id")
    cold = tiles_in(scenes.geometry["synth_900"], 19)[: args.tiles]
    others = tiles_in(scenes.geometry["synth_901"], 19) + tiles_in(scenes.geometry["naip_43p7840_m92p4228"], 19)
    overload = others[: args.overload]
    fresh = others[args.overload: args.overload + args.mixed_cold]  # in neither application's cache
    with tempfile.TemporaryDirectory() as tmp, ray_session(RaySettings(num_cpus=2)):
        from ray import serve

        from magseg_ray.serve import app

        model = args.model or tiny_model(Path(tmp))
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(app({"catalog": str(DEMO_DIR / "scenes"), "model": model, "max_new_tokens": args.max_new_tokens,
                           "overlap": 32, "cpus_per_replica": 1.0, "max_ongoing_requests": 2,
                           "max_queued_requests": 2}), name="bench", route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            first = phase(base, cold, args.concurrency, args.timeout)
            again = phase(base, cold, args.concurrency, args.timeout)
            with ThreadPoolExecutor(len(overload)) as pool:
                results = list(pool.map(lambda q: fetch(f"{base}/tiles/{q}.png", args.timeout), overload))
            with urllib.request.urlopen(f"{base}/healthz", timeout=30) as r:
                health = json.loads(r.read())
            view, mixed_load = map_view(base, model, cold, fresh, args)
        finally:
            serve.shutdown()
    rejected = [s for status, s in results if status == 503]
    result = {
        "benchmark": "serve", "baseline": "cold_tiles", "load_avg_1m_at_start": round(load, 2), "tiles": len(cold), "concurrency": args.concurrency,
        "model": "tiny" if not args.model else args.model, "cold": first, "cached": again,
        "cached_speedup": round(first["p50_s"] / max(again["p50_s"], 1e-6), 1),
        "overload": {"requests": len(overload), "ok": sum(s == 200 for s, _ in results), "http_503": len(rejected),
                     "timeouts": sum(s == 0 for s, _ in results), "other": sum(s not in (0, 200, 503) for s, _ in results),
                     "slowest_503_s": round(max(rejected), 3) if rejected else None},
        "chips_computed": health["chips_computed"], "model_calls": health["model_calls"],
        "largest_call": health["largest_call"], "view": view, "mixed": mixed_load,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
