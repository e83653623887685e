"""One scene in every encoding vendors ship (tests/chips/vendor_encodings.py: 8-bit RGB, 11-, 12- and 16-bit
RGBN, BGRN, with alpha, with nodata) reads as the same 8-bit RGB the model was trained on
(magseg_ray.chips.radiometry); a per-scene percentile stretch, the rule before, does not."""

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
