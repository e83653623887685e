"""The training driver SFT and GRPO share: the merged export of a run's policy."""

from dataclasses import replace

import torch
from transformers import AutoConfig

from magseg_ray.model.card import ModelPrompt, read_model_prompt, write_model_prompt
from magseg_ray.model.checkpoint import load_model, save_model
from magseg_ray.model.lora import attach_lora
from magseg_ray.train.driver import export_merged
from magseg_ray.train.grpo import GRPOConfig


def test_the_exported_policy_keeps_the_start_models_card_and_dtype(tiny_dir, tmp_path):
    """The merged GRPO policy is stored like its start: same dtype (bfloat16 here), and the card's
    decoding and fields settings carried over, so it maps as the start model did."""
    start = tmp_path / "start"
    model, processor = load_model(tiny_dir)
    save_model(model.to(torch.bfloat16), processor, start)
    write_model_prompt(start, replace(ModelPrompt(), chip_size=256, boundary_bias=7.0, field_seed_px=5.0))
    cfg = GRPOConfig(model=str(start), data="x")
    attach_lora(load_model(start)[0], cfg.lora()).save_pretrained(tmp_path / "adapter")
    out = export_merged(cfg, tmp_path / "adapter", tmp_path / "out")
    assert read_model_prompt(out) == read_model_prompt(start)
    assert AutoConfig.from_pretrained(out, local_files_only=True).dtype == torch.bfloat16
    assert (out / "model.safetensors").stat().st_size < 0.6 * (tiny_dir / "model.safetensors").stat().st_size
