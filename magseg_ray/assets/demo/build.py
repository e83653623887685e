"""Rebuild the bundled demo (scenes/ and demo.geojson); run from the repository root:

    python magseg_ray/assets/demo/build.py [--naip ../shared/data/naip-fields]

- ``naip_43p7840_m92p4228``: a real NAIP scene (1 m, UTM 15N) copied unchanged from the naip-fields
  set; it is in the demo model's *validation* split, so the demo map is on a scene the model never
  trained on.
- ``synth_900``, ``synth_901``: synthetic smallholder scenes (0.5 m, 512 px), seeds the demo model
  never saw, placed side by side across the UTM 47N / 48N zone line at 102 E, 13 N (western
  Cambodia), overlapping by 8 m, so the AOI spans two scenes in different CRSs.
- ``demo.geojson``: both synthetic scenes and a 400 m square of the NAIP scene.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from pyproj import Transformer

from magseg_ray.scenes.synthetic import SyntheticConfig, make_scene, write_scene

HERE = Path(__file__).resolve().parent
NAIP_SCENE = "naip_43p7840_m92p4228"
SIZE_PX, GSD, OVERLAP_M = 512, 0.5, 8.0


def seam_origins(lon: float = 102.0, lat: float = 13.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """Top-left corners of a 47N scene ending just east of ``lon`` and a 48N scene starting just west of it."""
    side = SIZE_PX * GSD
    x47, y47 = Transformer.from_crs("EPSG:4326", "EPSG:32647", always_xy=True).transform(lon, lat)
    x48, y48 = Transformer.from_crs("EPSG:4326", "EPSG:32648", always_xy=True).transform(lon, lat)
    return (round(x47 - side + OVERLAP_M / 2), round(y47 + side / 2)), (round(x48 - OVERLAP_M / 2), round(y48 + side / 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naip", default="../shared/data/naip-fields")
    args = parser.parse_args()
    scenes = HERE / "scenes"
    scenes.mkdir(exist_ok=True)
    for suffix in (".tif", ".labels.tif", ".fields.gpkg"):
        shutil.copyfile(Path(args.naip) / f"{NAIP_SCENE}{suffix}", scenes / f"{NAIP_SCENE}{suffix}")
    west, east = seam_origins()
    for seed, crs, origin in ((900, "EPSG:32647", west), (901, "EPSG:32648", east)):
        cfg = dataclasses.replace(SyntheticConfig(), seed=seed, size_px=SIZE_PX, gsd=GSD, crs=crs, origin=origin)
        paths = write_scene(make_scene(cfg), scenes, f"synth_{seed}")
        paths["classes"].unlink()  # the mapping needs the image; labels and polygons are the truth
    import geopandas as gpd
    import shapely

    from magseg_ray.scenes.catalog import load_catalog

    cat = load_catalog(scenes).scenes.set_index("id")
    synth = shapely.box(*gpd.GeoSeries([cat.geometry["synth_900"], cat.geometry["synth_901"]]).total_bounds)
    naip = cat.loc[NAIP_SCENE]
    x0, y0 = naip.native_bounds[0] + 300, naip.native_bounds[1] + 300
    square = gpd.GeoSeries([shapely.box(x0, y0, x0 + 400, y0 + 400)], crs=naip["crs"]).to_crs("EPSG:4326")
    aoi = gpd.GeoDataFrame({"name": ["synthetic, across the 47N/48N seam", "NAIP, 400 m square"]},
                           geometry=[synth, square.iloc[0]], crs="EPSG:4326")
    (HERE / "demo.geojson").write_text(json.dumps(json.loads(aoi.to_json(drop_id=True)), indent=1))


if __name__ == "__main__":
    main()
