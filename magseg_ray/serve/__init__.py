"""On-demand field tiles on Ray Serve: ``magseg_ray.serve:app`` is the application builder.

    serve run magseg_ray.serve:app catalog=s3://bucket/catalog.parquet model=/models/magseg
    python jobs/serve.py --catalog ... --model ... --host 127.0.0.1 --port 8000

Modules: :mod:`~magseg_ray.serve.settings` (flags, replicas, autoscaling, limits: the one place
that sizes the server), :mod:`~magseg_ray.serve.app` (the deployment and its routes),
:mod:`~magseg_ray.serve.tiles` (tile math, chips under a tile, rendering),
:mod:`~magseg_ray.serve.cache` (chip cache), :mod:`~magseg_ray.serve.maps` (precomputed
``map_region`` outputs), :mod:`~magseg_ray.serve.viewer` (the ``/map`` page).
"""

from magseg_ray.serve.app import app

__all__ = ["app"]
