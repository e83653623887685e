"""The scenes' imagery as map tiles (``GET /imagery/{z}/{x}/{y}.png``): a rio-tiler mosaic of the
catalog's COGs, first scene by id on top, each scene's bands and values brought to 8-bit RGB as the
model sees them (:mod:`magseg_ray.chips.radiometry`).

rio-tiler is imported with this module, at replica start, not in the request thread: two worker
threads importing it at once leave it half-initialised ("cannot import name 'Reader'") for the
replica's life.
"""

from __future__ import annotations

import rasterio
from rio_tiler.errors import EmptyMosaicError
from rio_tiler.io import Reader
from rio_tiler.mosaic import mosaic_reader

from magseg_ray.chips.radiometry import bit_depth, rgb_bands, scene_percentiles
from magseg_ray.chips.read import ReadConfig
from magseg_ray.errors import NotCoveredError, SceneError
from magseg_ray.serve.tiles import TILE_SIZE, scenes_under


def imagery_tile(tile, scenes, store, config: ReadConfig = ReadConfig()) -> bytes:
    """The PNG of ``tile`` (a :class:`~magseg_ray.serve.tiles.Tile`) over the catalog ``scenes``;
    :class:`NotCoveredError` where no scene has imagery, :class:`SceneError` naming a scene that
    cannot be read."""

    def read(scene, *args, **kwargs):
        try:
            with Reader(store.gdal_path(scene["uri"])) as src:
                bands = tuple(rgb_bands(src.dataset, config.bands))
                bits = bit_depth(src.dataset, config.bit_depth)
                img = src.tile(*args, indexes=bands, **kwargs)
            if config.radiometry == "scene-percentile":
                img.rescale(in_range=list(zip(*scene_percentiles(scene["uri"], bands, store))))
            elif bits != 8 or scene["dtype"] != "uint8":
                img.rescale(in_range=[(0, 2**bits - 1)] * 3)
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
