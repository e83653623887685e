import json

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import Polygon, box

from magseg_ray.chips.windows import ChipConfig, chip_windows, load_aoi
from magseg_ray.errors import ConfigError, SceneError
from magseg_ray.scenes.catalog import load_catalog

DATA = "tests/data/naip"


@pytest.fixture(scope="module")
def scenes():
    return load_catalog(DATA).scenes


def write_geojson(path, geometry, crs=None):
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(geometry)}]}
    if crs:
        fc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(fc))
    return path


def test_aoi_over_two_scenes_in_two_crs(scenes, tmp_path):
    aoi = load_aoi(write_geojson(tmp_path / "aoi.geojson", shapely.union_all([g.buffer(-0.001) for g in scenes.geometry])))
    tasks = chip_windows(scenes, aoi, ChipConfig(chip_size=256, overlap=32))
    assert {t.crs for t in tasks} == {"EPSG:32615", "EPSG:32617"}
    by_scene = {s: [t for t in tasks if t.scene_id == s] for s in scenes["id"]}
    for sid, ts in by_scene.items():
        offsets = sorted({t.col_off for t in ts})
        assert offsets[:2] == [0, 224]  # stride = chip - overlap
        assert all(t.size == 256 and t.chip_id == f"{sid}/{t.row_off}_{t.col_off}" for t in ts)


def test_aoi_selects_only_intersecting_chips(scenes, tmp_path):
    scene = scenes.iloc[0]
    west, south, east, north = scene.geometry.bounds
    corner = box(west, north - (north - south) * 0.1, west + (east - west) * 0.1, north)  # top-left 10%
    tasks = chip_windows(scenes, load_aoi(write_geojson(tmp_path / "a.geojson", corner)), ChipConfig(256, 0))
    assert [t.chip_id for t in tasks] == [f"{scene.id}/0_0"]


def test_aoi_in_a_projected_crs(scenes, tmp_path):
    scene = scenes[scenes["crs"] == "EPSG:32615"].iloc[0]
    x0, y0, x1, y1 = scene.native_bounds
    path = tmp_path / "utm.gpkg"
    gpd.GeoDataFrame(geometry=[box(x0 + 10, y1 - 100, x0 + 100, y1 - 10)], crs="EPSG:32615").to_file(path)
    tasks = chip_windows(scenes, load_aoi(path), ChipConfig(256, 0))
    assert [t.chip_id for t in tasks] == [f"{scene.id}/0_0"]


def test_aoi_errors(scenes, tmp_path):
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    with pytest.raises(ConfigError, match="1 invalid geometries, e.g. feature #0: Self-intersection"):
        load_aoi(write_geojson(tmp_path / "bowtie.geojson", bowtie))
    utm_coords = box(430000, 4876000, 430500, 4876500)  # metres, but GeoJSON says lon/lat
    with pytest.raises(ConfigError, match="are not longitudes/latitudes"):
        load_aoi(write_geojson(tmp_path / "undeclared.geojson", utm_coords))
    with pytest.raises(ConfigError, match="must hold polygons"):
        load_aoi(write_geojson(tmp_path / "point.geojson", shapely.Point(1, 1)))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_aoi(tmp_path / "missing.geojson")
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(ConfigError, match="has no geometry"):
        load_aoi(tmp_path / "empty.geojson")
    with pytest.raises(SceneError, match="touches none of the 2 catalogued scenes"):
        chip_windows(scenes, box(100, 10, 101, 11))
    with pytest.raises(ConfigError, match="overlap"):
        ChipConfig(chip_size=256, overlap=256)


def test_an_aoi_across_the_antimeridian_is_read_the_short_way(tmp_path):
    """Issue 38: a polygon from 179 E to 179 W was read as the band -179..179 round the globe."""
    crossing = shapely.Polygon([(179, 0), (-179, 0), (-179, 1), (179, 1)])
    aoi = load_aoi(write_geojson(tmp_path / "fiji.geojson", crossing))
    assert aoi.geom_type == "MultiPolygon" and aoi.area == pytest.approx(2.0)
    assert aoi.contains(shapely.Point(179.5, 0.5)) and aoi.contains(shapely.Point(-179.5, 0.5))
    assert not aoi.intersects(shapely.box(0, 0, 1, 1))
    plain = shapely.Polygon([(10, 0), (12, 0), (12, 1), (10, 1)])  # others are left as they are
    assert load_aoi(write_geojson(tmp_path / "plain.geojson", plain)).equals(plain)
