"""A tiny Gemma3 grounder folder laid out as ``google/gemma-3-4b-it`` is on the hub.

Model: ``Gemma3ForConditionalGeneration`` from a small ``Gemma3Config`` (the ``tiny`` preset's
sizes, random weights). Files beside the weights, with the hub's values (public copies of the
4b-it folder; the guide lists them): ``preprocessor_config.json`` (``Gemma3ImageProcessor``,
mean = std = 0.5, rescale 1/255, resample 2, pan-and-scan off; size and ``image_seq_length``
scaled to the tiny tower: 64 px, 16 tokens, where the hub has 896 px and 256),
``processor_config.json``, ``chat_template.json`` (the hub's template, which starts with
``{{ bos_token }}``) and a Gemma BPE (``GemmaTokenizer``: byte fallback, one token per digit,
``<start_of_image>`` / ``<end_of_image>`` / ``<image_soft_token>`` as its extra special tokens,
at small ids: the mapping model's fixture, :mod:`tests.hub.gemma3`, keeps Gemma's).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub.gemma3 import CHAT_TEMPLATE

SPECIAL = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
SIDE, TOKENS = 64, 16
PREPROCESSOR = {"do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
                "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
                "image_seq_length": TOKENS, "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None,
                "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
                "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
                "size": {"height": SIDE, "width": SIDE}}


def make_gemma3_grounder(path: str | Path) -> Path:
    """Write the tiny Gemma3 grounder folder into ``path`` (created); returns it."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GenerationConfig

    from tests.hub.vocab import gemma_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma_bpe(SPECIAL, add_bos_token=True, extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tokenizer.save_pretrained(path)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(0)
    common = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                         max_position_embeddings=4096, sliding_window=512, **common),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=SIDE, patch_size=8,
                           vision_use_head=False),
        mm_tokens_per_image=TOKENS, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), **common)
    model = Gemma3ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[1, ids("<end_of_turn>")], **{
        k: v for k, v in common.items() if k != "eos_token_id"})
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (path / "processor_config.json").write_text(json.dumps(
        {"image_seq_length": TOKENS, "processor_class": "Gemma3Processor"}, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return path
