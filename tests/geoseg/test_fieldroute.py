import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from magseg_ray.geoseg.config import GeoSegConfig
from magseg_ray.geoseg.fieldroute import FieldRoute, MapRoute, asks_for_fields, central_instance, phrase_classes
from magseg_ray.geoseg.pipeline import GeoSeg
from magseg_ray.model.checkpoint import DEMO_MODEL

HELD_OUT = "magseg_ray/assets/demo/scenes/naip_43p7840_m92p4228"


def test_phrase_classes():
    assert phrase_classes("the large irrigated field", "fields3") == (1, 2)
    assert phrase_classes("a pond near the farmstead", "alu") == (4,)
    assert phrase_classes("the farmstead", "fields3") == ()


def test_central_instance_prefers_the_middle():
    inst = np.zeros((8, 8), np.int32)
    inst[:, :2] = 1  # bigger, but at the edge
    inst[3:5, 3:5] = 2
    assert np.argwhere(central_instance(inst)).tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    assert central_instance(inst, "all").sum() == 20 and central_instance(inst * 0) is None


def scene_and_field(index: int):
    with rasterio.open(HELD_OUT + ".tif") as src:
        image, transform, crs = np.moveaxis(src.read([1, 2, 3]), 0, -1), src.transform, src.crs
    fields = gpd.read_file(HELD_OUT + ".fields.gpkg").to_crs(crs)
    geom = fields.geometry[index]
    truth = rasterize([(geom, 1)], out_shape=image.shape[:2], transform=transform).astype(bool)
    ys, xs = np.nonzero(truth)
    return image, transform, crs, fields, truth, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_map_route_selects_the_mapped_field_in_the_box():
    image, transform, crs, fields, truth, box = scene_and_field(47)
    route = MapRoute.from_fields(fields, image.shape[:2], transform, crs)
    r = GeoSeg(None, None, route, GeoSegConfig(routes="text")).segment(image, "the field", box=box)
    assert r.case == "text" and iou(r.mask, truth) > 0.95


@pytest.mark.slow  # about 70 s on 2 busy cores: the demo model answers ~16 patches
def test_field_route_segments_a_queried_field_of_the_held_out_scene():
    image, _, _, _, truth, box = scene_and_field(47)
    route = FieldRoute.load(DEMO_MODEL)
    r = GeoSeg(None, None, route, GeoSegConfig(routes="text")).segment(image, "the field", box=box)
    x1, y1, x2, y2 = r.refined
    box_mask = np.zeros_like(truth)
    box_mask[y1:y2, x1:x2] = True
    assert r.case == "text" and r.mask.any() and not (r.mask & ~box_mask).any()
    # the model's field beats the everything-in-the-box answer (measured: 0.48 vs 0.39)
    assert iou(r.mask, truth) > iou(box_mask, truth) and iou(r.mask, truth) > 0.4
    assert route.segment_box(image, r.refined, "the farmstead") is None


@pytest.mark.parametrize("query, fields", [
    ("fields", True), ("all the farm fields", True), ("Show me every field in this area", True), ("cropland", True),
    ("the largest field", False), ("fields next to the pond", False), ("ponds", False), ("all", False),
])
def test_a_query_for_the_fields_themselves(query, fields):
    assert asks_for_fields(query) is fields
