"""One scene in every encoding vendors ship (tests/chips/vendor_encodings.py: 8-bit RGB, 11-, 12- and 16-bit
RGBN, BGRN, with alpha, with nodata) reads as the same 8-bit RGB the model was trained on
(magseg_ray.chips.radiometry), and the demo model makes the same fields of each within a stated tolerance;
a per-scene percentile stretch, the rule before, does neither."""

from pathlib import Path

import numpy as np
import pytest

from magseg_ray.chips.radiometry import parse_bands
from magseg_ray.chips.read import ReadConfig, read_window
from magseg_ray.errors import ConfigError

from tests.chips.vendor_encodings import ENCODINGS, write_encoding

SCENE = Path(__file__).resolve().parents[2] / "magseg_ray/assets/demo/scenes/naip_43p7840_m92p4228.tif"
SHIFT = {"u8": 0, "rgbn16": 0, "rgbn12": 1, "rgbn11": 2, "bgrn11": 2, "alpha11": 2, "nodata11": 2}
"""Largest difference to the 8-bit scene, in 0-255 levels: the vendors' offset (20 DN), over the
bit depth's full range (20 / 2047 * 255 = 2.5 levels at 11 bits, 1.2 at 12 bits)."""


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc")
    return {name: str(write_encoding(SCENE, out, name)) for name in ENCODINGS}


def whole(uri: str, config: ReadConfig = ReadConfig()):
    return read_window(uri, 0, 0, 1029, 1033, config)


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_encoding_reads_as_the_8bit_scene(encoded, name):
    want, _ = whole(encoded["u8"])
    got, valid = whole(encoded[name])
    hidden = np.zeros(valid.shape, bool)
    if name in ("alpha11", "nodata11"):
        hidden[: 1029 // 2, : 1033 // 2] = True
    assert np.array_equal(valid, ~hidden)
    diff = got.astype(int) - want
    assert np.abs(diff[valid]).max() == SHIFT[name] and (diff[valid] >= 0).all()
    assert (got[hidden] == 0).all()


def test_bit_depth_and_bands_given_by_the_caller(encoded, tmp_path):
    """A file that does not say (no NBITS, no band names): --bit-depth 11 --bands 3,2,1."""
    import rasterio

    with rasterio.open(encoded["bgrn11"]) as src:
        profile, data = src.profile, src.read()
    profile.update(driver="GTiff")
    with rasterio.open(tmp_path / "mute.tif", "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "mute.tif") as src:
        assert "NBITS" not in src.tags(1, "IMAGE_STRUCTURE") and not any(src.descriptions)
    want, _ = whole(encoded["rgbn11"])
    assert np.array_equal(whole(str(tmp_path / "mute.tif"), ReadConfig(parse_bands("3,2,1"), 11))[0], want)
    assert not np.array_equal(whole(str(tmp_path / "mute.tif"))[0], want)


def test_the_per_scene_percentile_stretch_changes_the_colours(encoded):
    """What uint16 scenes got before: about 26 levels off on average, another colour balance."""
    want, _ = whole(encoded["u8"])
    got, _ = whole(encoded["rgbn11"], ReadConfig(radiometry="scene-percentile"))
    assert np.abs(got.astype(int) - want).mean() > 20


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="radiometry 'stretch': must be one of full-range, scene-percentile"):
        ReadConfig(radiometry="stretch")
    with pytest.raises(ConfigError, match="bit depth 17"):
        ReadConfig(bit_depth=17)
    with pytest.raises(ConfigError, match="bands '3,2': give three 1-based band indices"):
        parse_bands("3,2")



WINDOW = (384, 256)
"""Row and column of the chip segmented below: one chip of the card's size, fields across it."""


def chip_fields(card, image: np.ndarray, classes: np.ndarray, confidence: np.ndarray):
    """Fields of the chip at :data:`WINDOW` as ``map_region`` makes a scene's: the card's core depth
    and field rules, the edge split reading the chip's pixels."""
    import rasterio

    from magseg_ray.fields.polygons import scene_fields
    from magseg_ray.fields.rules import resolve_rules
    from magseg_ray.masks.schemas import get_schema

    with rasterio.open(SCENE) as src:
        transform, crs = src.transform @ rasterio.Affine.translation(WINDOW[1], WINDOW[0]), src.crs.to_string()
    pixels = np.repeat(np.repeat(confidence, card.patch_size, 0), card.patch_size, 1)
    return scene_fields(classes, pixels, transform, crs, get_schema(card.schema), 1.0, 16, card.field_seed_px,
                        resolve_rules(card), image)


@pytest.mark.slow
def test_every_encoding_gives_the_same_fields(encoded):
    """The demo model on one chip of the demo NAIP scene in four encodings, read as map_region reads
    (the card's radiometry), fields made as map_region makes them. 16-bit: the same classes and
    fields as 8-bit. 11-bit, RGBN and BGRN: measured 0.997 of pixels the same class and the union
    of the fields within IoU 0.998 of 8-bit's; bound 0.97 and 0.95. The per-scene percentile stretch
    (the read before) on the 11-bit scene: 0.44 and 0.26, outside the bound."""
    import shapely

    from magseg_ray.model.card import read_model_prompt
    from magseg_ray.model.checkpoint import DEMO_MODEL
    from magseg_ray.model.segmenter import ChipSegmenter
    from magseg_ray.prompt import patch_boxes

    card = read_model_prompt(DEMO_MODEL)
    runs = [(name, ReadConfig()) for name in ("u8", "rgbn16", "rgbn11", "bgrn11")]
    runs.append(("rgbn11", ReadConfig(radiometry="scene-percentile")))
    size, boxes = card.chip_size, patch_boxes(card.chip_size, card.chip_size, card.patch_size)
    chips = [read_window(encoded[name], *WINDOW, size, size, config) for name, config in runs]
    results = ChipSegmenter(str(DEMO_MODEL), card, 64, None).segment_chips([(im, ok, boxes) for im, ok in chips])
    fields = [chip_fields(card, image, *result) for (image, _), result in zip(chips, results)]
    want, union = results[0][0], shapely.union_all(fields[0].geometry.values)

    def agreement(i: int) -> tuple[float, float]:
        got = shapely.union_all(fields[i].geometry.values)
        return float((results[i][0] == want).mean()), float(shapely.area(got & union) / shapely.area(got | union))

    assert len(fields[0]) > 5 and np.array_equal(results[1][0], want)
    assert fields[1].geometry.equals(fields[0].geometry)
    for i in (2, 3):
        same, iou = agreement(i)
        assert same >= 0.97 and iou >= 0.95, (runs[i][0], same, iou)
    same, iou = agreement(4)
    assert same < 0.97 and iou < 0.95, ("scene-percentile", same, iou)
