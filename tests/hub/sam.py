"""A tiny SAM (v1) checkpoint folder laid out as ``facebook/sam-vit-base`` is on the hub.

Model: ``SamModel`` from a small ``SamConfig`` (random weights). ``preprocessor_config.json`` has
the hub's keys and values (``SamImageProcessor``: longest edge resized, padded bottom-right,
ImageNet mean/std, resample 2, ``processor_class`` ``SamProcessor``) with the sides scaled to
the tiny tower: 64 px where the hub has 1024, masks 16 where it has 256.
"""

from __future__ import annotations

import json
from pathlib import Path

SIDE = 64
PREPROCESSOR = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "SamImageProcessor",
                "image_std": [0.229, 0.224, 0.225], "mask_pad_size": {"height": SIDE // 4, "width": SIDE // 4},
                "mask_size": {"longest_edge": SIDE // 4}, "pad_size": {"height": SIDE, "width": SIDE},
                "processor_class": "SamProcessor", "resample": 2, "rescale_factor": 0.00392156862745098,
                "size": {"longest_edge": SIDE}}


def make_sam(path: str | Path) -> Path:
    """Write the tiny SAM folder into ``path`` (created); returns it."""
    import torch
    from transformers import SamConfig, SamModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    SamModel(SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=SIDE, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=SIDE, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
