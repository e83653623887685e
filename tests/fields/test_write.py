"""Field tables as written, checked by the standards' rules (tests/fields/validators.py) without a
run: a fiboa 0.3 / GeoParquet 1.1 part, and a GeoPackage with no field (GDAL must still see polygons)."""

import geopandas as gpd
import shapely

from magseg_ray.fields.write import _parquet, to_fiboa, write_geopackage
from magseg_ray.run_files import RunFiles
from tests.fields.validators import fiboa_problems, geopackage_problems, geoparquet_problems


def _fields(n: int) -> gpd.GeoDataFrame:
    boxes = [shapely.box(102 + i * 1e-3, 13, 102 + i * 1e-3 + 5e-4, 13 + 5e-4) for i in range(n)]
    frame = gpd.GeoDataFrame({"scene_id": ["s"] * n, "confidence": [0.9] * n, "pixels": [400] * n},
                             geometry=boxes, crs="EPSG:4326")
    return to_fiboa(frame, [f"s-{i}" for i in range(n)], "field", {"s": "2024-06-01T10:00:00Z"})


def test_a_part_passes_fiboa_and_geoparquet(tmp_path):
    path = tmp_path / "part.parquet"
    path.write_bytes(_parquet(_fields(3)))
    warnings = []
    assert fiboa_problems(path, warnings) == [] and geoparquet_problems(path) == []
    assert warnings == ["geometry_bbox: No schema defined"]  # the covering column, as fiboa-cli warns
    assert len(gpd.read_parquet(path, bbox=(102, 13, 102.0006, 13.0006))) == 1  # filtered by the covering


def test_a_geopackage_without_fields_is_a_polygon_layer(tmp_path):
    files = RunFiles(str(tmp_path))
    write_geopackage(files, "fields.gpkg", _fields(0))
    assert geopackage_problems(tmp_path / "fields.gpkg", "fields", 0) == []
    write_geopackage(files, "two.gpkg", _fields(2))
    assert geopackage_problems(tmp_path / "two.gpkg", "fields", 2) == []
