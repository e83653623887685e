"""Labelled scenes packed for a machine that has only PyTorch: the demo recipe's data on disk.

A lent GPU machine has PyTorch and transformers but no GDAL, geopandas or Ray, and takes at most
64 MiB of files. :func:`pack_scenes` reads labelled scenes (any catalog, folder or prefix the jobs
take) once, on a CPU machine with the full stack, into a flat folder that PIL and numpy read:

- ``<id>.jpg``: the RGB image (JPEG, quality 95: the 30 naip-fields scenes take about 15 MB);
- ``<id>.labels.png``: the field instance raster (16-bit PNG, lossless; 0 = not a field);
- ``index.json``: every scene's id, split (the jobs' ``split_of`` rule) and size, and the data's
  attribution.

:func:`unpack_scenes` reads it back as ``(image, fields3 classes)`` pairs per split. JPEG changes
pixel values by a few levels; the scenes' own COGs are JPEG-compressed too, and held-out scores are
always measured on the original scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from magseg_ray.errors import ConfigError

INDEX = "index.json"
ATTRIBUTION = ("NAIP imagery: USDA Farm Service Agency (public domain). Field polygons: "
               "agoro-field-boundary-detector (MIT License).")


def pack_scenes(data: str, out: str | Path, val_fraction: float = 0.2, labels: str = "") -> dict:
    """Pack the labelled scenes of ``data`` into ``out`` (see module doc); returns the index.
    Labels: the polygon file ``labels``, else each scene's sidecar (:mod:`magseg_ray.chips.labels`);
    images read as every job reads them (:mod:`magseg_ray.chips.radiometry`)."""
    from PIL import Image

    from magseg_ray.chips.labels import labelled_scenes, read_labelled_scene
    from magseg_ray.chips.pipeline import split_of
    from magseg_ray.scenes.catalog import load_catalog

    scenes = labelled_scenes(load_catalog(data).scenes, labels, repr(data))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = {"attribution": ATTRIBUTION, "val_fraction": val_fraction, "scenes": []}
    for row in scenes.itertuples():
        image, instances = read_labelled_scene(row)
        Image.fromarray(image).save(out / f"{row.id}.jpg", quality=95)
        Image.fromarray(instances.astype(np.uint16)).save(out / f"{row.id}.labels.png")
        index["scenes"].append({"id": row.id, "split": split_of(row.id, val_fraction, 0),
                                "height": int(image.shape[0]), "width": int(image.shape[1])})
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


def unpack_scenes(folder: str | Path, boundary_width: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``{"train": [...], "val": [...]}`` of ``(RGB image, fields3 classes)`` from a packed folder."""
    from PIL import Image

    from magseg_ray.masks.schemas import classes_from_instances

    folder = Path(folder)
    if not (folder / INDEX).is_file():
        raise ConfigError(f"{str(folder)!r} is not a packed scene folder (no {INDEX}); make one with "
                          "`python jobs/train_demo.py pack --data SCENES --out FOLDER`")
    out: dict[str, list] = {"train": [], "val": []}
    for scene in json.loads((folder / INDEX).read_text())["scenes"]:
        image = np.asarray(Image.open(folder / f"{scene['id']}.jpg").convert("RGB"))
        labels = np.asarray(Image.open(folder / f"{scene['id']}.labels.png")).astype(np.int64)
        out[scene["split"]].append((image, classes_from_instances(labels, "fields3", boundary_width)))
    return out
