"""A tiny PaliGemma checkpoint folder laid out as ``google/paligemma-3b-mix-224`` is on the hub.

Model: ``PaliGemmaForConditionalGeneration`` from a small ``PaliGemmaConfig`` (Gemma decoder,
SigLIP tower, random weights). Files beside the weights, with the hub's values (public copies
of the mix-224 folder): ``preprocessor_config.json`` (``SiglipImageProcessor``, mean = std = 0.5,
rescale 1/255, resample 3; size and ``image_seq_length`` scaled to the tiny tower: 32 px, 16
tokens, where the hub has 224 px and 256) and a Gemma BPE (``GemmaTokenizer``, byte fallback,
single digits) holding ``<image>`` (special) and PaliGemma's 1024 ``<locNNNN>`` and 128
``<segNNN>`` tokens (plain added tokens, so a decoded answer keeps them). No chat template: PaliGemma takes ``"detect ..."`` prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

SIDE, TOKENS = 32, 16
LOCS = [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]
PREPROCESSOR = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
                "image_seq_length": TOKENS, "image_std": [0.5, 0.5, 0.5], "processor_class": "PaliGemmaProcessor",
                "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": SIDE, "width": SIDE}}


def make_paligemma(path: str | Path) -> Path:
    """Write the tiny PaliGemma folder into ``path`` (created); returns it."""
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from tests.hub.vocab import gemma_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = gemma_bpe([], add_bos_token=True, extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens(LOCS)  # plain tokens, as the hub's: decoding keeps them
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = PaliGemmaConfig(
        text_config=dict(model_type="gemma", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=SIDE, patch_size=8, projection_dim=64),
        projection_dim=64, hidden_size=64, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=2)
    PaliGemmaForConditionalGeneration(config).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
