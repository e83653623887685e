"""Scene ownership and seams on hand-made footprints (EPSG:4326 degrees, no rasters)."""

import geopandas as gpd
import shapely

from magseg_ray.fields.seams import seams
from magseg_ray.scenes.overlap import owned_areas


def test_each_place_is_owned_once_and_seams_are_the_shared_edges():
    footprints = gpd.GeoSeries({
        "a": shapely.box(0, 0, 2, 2),
        "b": shapely.box(1, 0, 3, 2),  # overlaps a: a owns the overlap (earlier id)
        "c": shapely.box(0, 2, 3, 3),  # touches a and b along y = 2
        "d": shapely.box(10, 10, 11, 11),  # alone
    })
    aoi = shapely.box(-1, -1, 12, 12)
    owned = owned_areas(gpd.GeoDataFrame({"id": footprints.index}, geometry=footprints.values), aoi)
    assert owned["b"].equals(shapely.box(2, 0, 3, 2)) and owned["a"].equals(footprints["a"])
    total = shapely.union_all(list(owned.values()))
    assert abs(sum(g.area for g in owned.values()) - total.area) < 1e-12  # no place twice
    assert total.equals(shapely.union_all(list(footprints)))
    seam = seams(owned, dict.fromkeys(owned, 0.01))
    assert seam["d"].is_empty
    # a's seam: its edge with b (x = 2) and with c (y = 2), nothing on its outer edges
    assert shapely.buffer(shapely.union(shapely.LineString([(2, 0), (2, 2)]), shapely.LineString([(0, 2), (2, 2)])),
                          0.011).contains(seam["a"])
    assert seam["a"].length > 3.9 and seam["c"].length > 2.9
