import pytest


@pytest.fixture(scope="session")
def geoseg_presets(tmp_path_factory):
    """Every tiny GeoSeg component saved as a checkpoint folder."""
    from magseg_ray.geoseg.presets import build_presets

    return build_presets(tmp_path_factory.mktemp("geoseg"))


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """Every GeoSeg family as a tiny hub-layout folder (``tests/hub``), built once: ``{family: folder}``."""
    from tests.hub.clip import make_clip
    from tests.hub.gemma3_grounder import make_gemma3_grounder
    from tests.hub.paligemma import make_paligemma
    from tests.hub.qwen2_5_vl import make_qwen2_5_vl
    from tests.hub.qwen3_vl import make_qwen3_vl
    from tests.hub.sam import make_sam
    from tests.hub.sam2 import make_sam2
    from tests.hub.sam3 import make_sam3

    root = tmp_path_factory.mktemp("hub")
    makers = {"qwen2_5_vl": make_qwen2_5_vl, "qwen3_vl": make_qwen3_vl, "gemma3": make_gemma3_grounder,
              "paligemma": make_paligemma, "clip": make_clip, "sam": make_sam, "sam2": make_sam2, "sam3": make_sam3}
    return {name: str(make(root / name)) for name, make in makers.items()}
