"""The scenes' imagery as map tiles (``GET /imagery/{z}/{x}/{y}.png``): a rio-tiler mosaic of the
catalog's COGs, first scene by id on top, uint16 scenes stretched as the model sees them.

rio-tiler is imported with this module, at replica start, not in the request thread: two worker
threads importing it at once leave it half-initialised ("cannot import name 'Reader'") for the
replica's life.
"""

from __future__ import annotations

import rasterio
from rio_tiler.errors import EmptyMosaicError
from rio_tiler.io import Reader
from rio_tiler.mosaic import mosaic_reader

from magseg_ray.chips.read import ReadConfig, scene_stretch
from magseg_ray.errors import NotCoveredError, SceneError
from magseg_ray.serve.tiles import TILE_SIZE, scenes_under


def imagery_tile(tile, scenes, store) -> bytes:
    """The PNG of ``tile`` (a :class:`~magseg_ray.serve.tiles.Tile`) over the catalog ``scenes``;
    :class:`NotCoveredError` where no scene has imagery, :class:`SceneError` naming a scene that
    cannot be read."""

    def read(scene, *args, **kwargs):
        bands = (1, 2, 3) if scene["bands"] >= 3 else (1, 1, 1)
        try:
            with Reader(store.gdal_path(scene["uri"])) as src:
                img = src.tile(*args, indexes=bands, **kwargs)
            if scene["dtype"] == "uint16":
                lo, hi = scene_stretch(scene["uri"], bands, ReadConfig().stretch_percentiles, store)
                img.rescale(in_range=list(zip(lo, hi)))
            return img
        except rasterio.errors.RasterioError as e:
            raise SceneError(f"scene {scene['id']} cannot be read: {e}") from None

    hits = scenes_under(scenes, tile.footprint, f"tile {tile}").to_dict("records")
    try:
        with store.rasterio_env():
            img, _ = mosaic_reader(hits, read, tile.x, tile.y, tile.z, tilesize=TILE_SIZE, threads=0)
    except EmptyMosaicError:
        raise NotCoveredError(f"tile {tile} holds no imagery") from None
    return img.render(img_format="PNG")
