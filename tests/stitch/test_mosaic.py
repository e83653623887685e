import numpy as np

from magseg_ray.chips.windows import ChipConfig
from magseg_ray.run_files import RunFiles, chip_file, encode_chip
from magseg_ray.stitch.mosaic import owner_chips, stitch_scene


def test_the_owner_of_a_pixel_is_the_chip_the_mosaic_took_it_from(tmp_path):
    """Each chip answers its own index everywhere; the stitched raster then says which chip every pixel
    came from, and owner_chips must name the same chip (overlaps split down the middle, edges, gaps)."""
    config, h, w = ChipConfig(64, 16), 150, 170
    files = RunFiles(str(tmp_path))
    ids = [f"s/{r}_{c}" for r in range(0, h, config.stride) for c in range(0, w, config.stride) if (r, c) != (48, 48)]
    for i, chip_id in enumerate(ids):
        files.write(chip_file(chip_id), encode_chip(np.full((64, 64), i, np.uint8), np.ones((2, 2)), 4, 0.0))
    classes, _, _ = stitch_scene(files, ids, h, w, config, 32)
    rows, cols = np.mgrid[0:h, 0:w]
    owners = owner_chips(ids, rows.ravel(), cols.ravel(), config)
    expected = [ids[v] if v != 255 else None for v in classes.ravel()]
    assert owners == expected and None in owners
