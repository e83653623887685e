"""A tiny SAM 2.1 checkpoint folder laid out as ``facebook/sam2.1-hiera-large`` is on the hub.

Model: ``Sam2Model`` (``model_type`` ``sam2``, as every SAM 2.1 folder) from a small
``Sam2Config``: a four-stage Hiera backbone, FPN neck, prompt encoder and mask decoder, random
weights. ``preprocessor_config.json`` has the hub's keys and values (``Sam2ImageProcessorFast``:
stretched to a square, ImageNet mean/std, resample 2, ``processor_class`` ``Sam2Processor``)
with the sides scaled to the tiny tower: 64 px where the hub has 1024, masks 16 where it has 256.
"""

from __future__ import annotations

import json
from pathlib import Path

SIDE = 64
PREPROCESSOR = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "Sam2ImageProcessorFast",
                "image_std": [0.229, 0.224, 0.225], "mask_size": {"height": SIDE // 4, "width": SIDE // 4},
                "processor_class": "Sam2Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
                "size": {"height": SIDE, "width": SIDE}}


def make_sam2(path: str | Path) -> Path:
    """Write the tiny SAM 2.1 folder into ``path`` (created); returns it."""
    import torch
    from transformers import Sam2Config, Sam2Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, image_size=[SIDE, SIDE], num_query_pool_stages=3, blocks_per_stage=[1, 2, 1, 1],
                    embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 2, 2],
                    window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[2],
                    window_positional_embedding_background_size=[2, 2])
    side = SIDE // 4
    Sam2Model(Sam2Config(
        vision_config=dict(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=32,
                           backbone_feature_sizes=[[side, side], [side // 2, side // 2], [side // 4, side // 4]]),
        prompt_encoder_config=dict(hidden_size=32, image_size=SIDE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=16),
    )).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
