import json

import numpy as np
import rasterio
from rasterio.transform import from_origin

from magseg_ray.geoseg.templates import make_bench, template_targets, window_fields


def labels_grid():
    """A 100 x 100 window: 1 big top-left, 2 small top-right, 3 bottom-left (touching the left
    edge), 4 bottom-right below-right of 1, 5 under the 200 px minimum."""
    lab = np.zeros((100, 100), np.int32)
    lab[0:40, 0:40] = 1      # 1600 px, centroid (19.5, 19.5)
    lab[0:15, 80:100] = 2    # 300 px
    lab[60:100, 0:20] = 3    # 800 px
    lab[70:100, 60:100] = 4  # 1200 px
    lab[50:55, 50:55] = 5    # 25 px
    return lab


def test_window_fields_drop_tiny_ones():
    assert sorted(window_fields(labels_grid(), 200)) == [1, 2, 3, 4]


def test_templates_by_hand():
    got = {q: (lv, ids) for lv, q, ids in template_targets(window_fields(labels_grid(), 200), 100)}
    assert got["the largest field"] == ("L1", [1])
    assert got["the smallest field"] == ("L1", [2])
    assert got["the field at the top left"] == ("L1", [1])
    assert got["the field at the top right"] == ("L1", [2])
    assert got["the field at the bottom left"] == ("L1", [3])
    assert got["the field at the bottom right"] == ("L1", [4])
    assert got["the field just below the largest field"] == ("L2", [3])
    assert got["the field just right of the largest field"] == ("L2", [2])
    assert got["the fields touching the left edge of the image"] == ("L2", [1, 3])


def test_the_levels_are_the_papers_explicit_relations_implicit_intent():
    got = {q: (lv, ids) for lv, q, ids in template_targets(window_fields(labels_grid(), 200), 100)}
    assert got["the field that needs the most seed to sow"] == ("L3", [1])
    assert got["the field a farmer could finish harvesting first"] == ("L3", [2])
    assert got["the fields a tractor entering from the left side of the image reaches without crossing another field"] \
        == ("L3", [1, 3])
    assert {lv for lv, _ in got.values()} == {"L1", "L2", "L3"}
    assert all("largest" not in q and "smallest" not in q and "edge" not in q for q, (lv, _) in got.items() if lv == "L3")


def test_an_intent_without_its_target_is_not_asked():
    one = {1: np.ones((10, 10), bool)}
    queries = {q for _, q, _ in template_targets(one, 10)}
    assert "the field that needs the most seed to sow" in queries
    assert "the field a farmer could finish harvesting first" not in queries  # no smallest distinct from the largest


def test_no_fields_no_items():
    assert template_targets({}, 100) == []


def test_make_bench_writes_images_masks_and_items(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    profile = dict(driver="GTiff", width=100, height=100, crs="EPSG:32615", transform=from_origin(500000, 4800000, 1, 1))
    with rasterio.open(scenes / "s.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(np.full((3, 100, 100), 90, np.uint8))
    with rasterio.open(scenes / "s.labels.tif", "w", count=1, dtype="uint16", **profile) as dst:
        dst.write(labels_grid().astype(np.uint16)[None])
    items = make_bench(scenes, tmp_path / "bench", window=100)
    assert len(items) == 13 and [json.loads(x)["id"] for x in (tmp_path / "bench" / "items.jsonl").read_text().splitlines()] \
        == [i["id"] for i in items]
    largest = next(i for i in items if i["query"] == "the largest field")
    assert largest["box"] == [0, 0, 40, 40]
    with rasterio.open(tmp_path / "bench" / largest["mask"]) as src:
        assert src.read(1).sum() == 1600 and src.crs.to_epsg() == 32615


def test_every_bench_query_fits_the_tiny_presets_text_encoders(geoseg_presets):
    """The preset tokenizer spells unknown words byte by byte: every template word must be in its corpus."""
    from magseg_ray.geoseg.clip_surgery import ClipSurgery
    from magseg_ray.geoseg.segmenters import TextSegmenter

    clip, sam3 = ClipSurgery.load(geoseg_presets["clip"]), TextSegmenter.load(geoseg_presets["sam3"])
    queries = {q for _, q, _ in template_targets(window_fields(labels_grid(), 200), 100)}
    assert len(queries) == 13
    assert [q for q in queries if clip.phrase_problem(q) or sam3.phrase_problem(q)] == []
