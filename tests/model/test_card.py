"""The model card read once for mapping: what the mapping plan and the tile server both take from it."""

import shutil

import pytest

from magseg_ray.errors import ConfigError
from magseg_ray.model.card import ModelPrompt, mapping_settings, write_model_prompt
from magseg_ray.model.checkpoint import model_fingerprint


def test_mapping_settings_resolve_the_card_against_the_flags(tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    write_model_prompt(model, ModelPrompt(patch_size=16, chip_size=128, field_seed_px=3.0))
    m = mapping_settings(model)  # the card's chip size, an eighth of it shared, the card's core depth
    assert (m.chip.chip_size, m.chip.overlap, m.seed_px, m.schema.name) == (128, 16, 3.0, "fields3")
    assert m.card.patch_size == 16 and m.fingerprint == model_fingerprint(str(model))
    m = mapping_settings(model, chip_size=64, overlap=8, seed_px=0)
    assert (m.chip.chip_size, m.chip.overlap, m.seed_px) == (64, 8, 0.0)
    with pytest.raises(ConfigError, match="chip_size 72 is not a multiple of the model's patch size 16"):
        mapping_settings(model, chip_size=72)
    with pytest.raises(ConfigError, match="seed_px -2"):
        mapping_settings(model, seed_px=-2)
    write_model_prompt(model, ModelPrompt(schema="ai4sf"))
    assert mapping_settings(model).schema.name == "ai4sf"
