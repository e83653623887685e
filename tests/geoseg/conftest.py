import pytest


@pytest.fixture(scope="session")
def geoseg_presets(tmp_path_factory):
    """Every tiny GeoSeg component saved as a checkpoint folder."""
    from magseg_ray.geoseg.presets import build_presets

    return build_presets(tmp_path_factory.mktemp("geoseg"))
