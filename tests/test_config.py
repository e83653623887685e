import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from magseg_ray.config import add_arguments, doc
from magseg_ray.geoseg.config import GeoSegConfig
from magseg_ray.geoseg.run import ModelsConfig
from magseg_ray.map_region import MapConfig
from magseg_ray.serve.settings import ServeSettings
from magseg_ray.train.grpo import GRPOConfig
from magseg_ray.train.sft import SFTConfig
from magseg_ray.train.vision import VisionPretrainConfig


@pytest.mark.parametrize("cls", [SFTConfig, GRPOConfig, VisionPretrainConfig, MapConfig, ServeSettings, GeoSegConfig,
                                 ModelsConfig])
def test_every_job_help_renders_every_field(cls):
    """``--help`` formats each help text with ``%``: a literal ``5 %`` in a field's doc used to
    break ``jobs/pretrain_vision.py --help``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(cls):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()) in text


def test_percent_signs_in_docs_and_defaults_are_kept():
    @dataclass
    class C:
        warmup: float = field(default=0.05, metadata=doc("5 % of the steps warm up"))
        name: str = field(default="100%", metadata=doc("a name"))

    parser = argparse.ArgumentParser()
    add_arguments(parser, C)
    text = parser.format_help()
    assert "5 % of the steps warm up" in text and "(default: 100%)" in text
    assert parser.parse_args(["--name", "x%"]).name == "x%"
