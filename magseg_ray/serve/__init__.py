"""On-demand field tiles on Ray Serve: ``magseg_ray.serve:app`` is the application builder.

    serve run magseg_ray.serve:app catalog=s3://bucket/catalog.parquet model=/models/magseg
    python jobs/serve.py --catalog ... --model ... --host 127.0.0.1 --port 8000

Modules: :mod:`~magseg_ray.serve.settings` (flags, replicas, autoscaling, limits: the one place
that sizes the server), :mod:`~magseg_ray.serve.deployment` (the deployment: routes only),
:mod:`~magseg_ray.serve.tiles` (tile math, chips under a tile, rendering),
:mod:`~magseg_ray.serve.batching` (a replica's chips: cached, or one batched model call),
:mod:`~magseg_ray.serve.cache` (chip cache), :mod:`~magseg_ray.serve.imagery` (imagery tiles),
:mod:`~magseg_ray.serve.maps` (precomputed ``map_region`` outputs), :mod:`~magseg_ray.serve.viewer`
(the ``/map`` page), :mod:`~magseg_ray.serve.segment` (GeoSeg's ``POST /segment``: body, scene
window, GeoJSON answer, the replica's pipeline).

``app`` is imported on first use, not with the package: importing the settings (as
``jobs/serve.py`` does to parse its flags) must not import Ray before
:func:`magseg_ray.cluster.ray_environment` has set Ray's environment.
"""

__all__ = ["app"]


def __getattr__(name: str):
    if name == "app":
        from magseg_ray.serve.deployment import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
