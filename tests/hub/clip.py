"""A tiny CLIP checkpoint folder laid out as ``openai/clip-vit-base-patch16`` is on the hub.

Model: ``CLIPModel`` from a small ``CLIPConfig`` (random weights). Files beside the weights, with
the hub's values (public copies of the openai folders): the old-style ``preprocessor_config.json``
(``CLIPFeatureExtractor``: ``"size"`` and ``"crop_size"`` plain integers, CLIP mean/std,
resample 3, centre crop; the side scaled to the tiny tower, 32 px where the hub has 224) and a
``CLIPTokenizer`` (lower-cased byte-level BPE with ``</w>`` word ends, ``<|startoftext|>`` /
``<|endoftext|>``) trained on GeoSeg's prompt words.
"""

from __future__ import annotations

import json
from pathlib import Path

SIDE = 32
PREPROCESSOR = {"crop_size": SIDE, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3, "size": SIDE}
"""``openai/clip-vit-base-patch16``'s ``preprocessor_config.json`` (224 there)."""


def make_clip(path: str | Path) -> Path:
    """Write the tiny CLIP folder into ``path`` (created); returns it."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from tests.hub.vocab import clip_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_bpe()
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  image_size=SIDE, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
