"""A tiny SAM3 checkpoint folder laid out as ``facebook/sam3`` is on the hub.

The hub's SAM3 folder is one ``Sam3VideoModel`` checkpoint (``model_type`` ``sam3_video``): the
image detector under ``detector_model.`` (``Sam3Model``: text prompts, route B) and the tracker
under ``tracker_model.`` / ``tracker_neck.`` (``Sam3TrackerModel``: point prompts, route A),
which share the detector's ViT. This fixture is that layout at small size, random weights:
``Sam3VideoModel`` from a small ``Sam3VideoConfig``, its weights saved under the hub's names
(transformers 5.23's ``save_pretrained`` of a ``Sam3VideoModel`` writes ``tracker_model.`` twice;
the hub's file has it once, which is what ``Sam3TrackerModel`` reads). Beside the weights:
``preprocessor_config.json`` (``Sam3ImageProcessorFast``, mean = std = 0.5, resample 2,
``processor_class`` ``Sam3Processor``; 112 px where the hub has 1008) and a ``CLIPTokenizer``
(SAM3's text encoder is CLIP's; ``model_max_length`` 32 as the hub's).
"""

from __future__ import annotations

import json
from pathlib import Path

SIDE = 112
PREPROCESSOR = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Sam3ImageProcessorFast",
                "image_std": [0.5, 0.5, 0.5], "mask_size": {"height": SIDE // 4, "width": SIDE // 4},
                "processor_class": "Sam3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
                "size": {"height": SIDE, "width": SIDE}}
_VIT = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=SIDE, patch_size=14, window_size=4, global_attn_indexes=[1],
            pretrain_image_size=SIDE)
_VISION = dict(model_type="sam3_vision_model", backbone_config=_VIT, fpn_hidden_size=32,
               backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]])


def _config(tokenizer):
    from transformers import Sam3VideoConfig

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    detector = dict(
        model_type="sam3", vision_config=_VISION,
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, projection_dim=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        geometry_encoder_config=dict(num_layers=1, **small), detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))
    tracker = dict(
        model_type="sam3_tracker_video", image_size=SIDE, vision_config=_VISION,
        prompt_encoder_config=dict(hidden_size=32, image_size=SIDE, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=16),
        num_maskmem=2, memory_attention_hidden_size=32, memory_attention_num_layers=1,
        memory_attention_num_attention_heads=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8], memory_encoder_hidden_size=32, memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=32, memory_fuser_embed_dim=32, memory_fuser_intermediate_dim=64)
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=SIDE // 4)


def make_sam3(path: str | Path) -> Path:
    """Write the tiny SAM3 folder into ``path`` (created); returns it."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Sam3VideoModel

    from tests.hub.vocab import clip_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_bpe()
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    Sam3VideoModel(_config(tokenizer)).eval().save_pretrained(path)
    weights = path / "model.safetensors"
    state = load_file(weights)
    double = "tracker_model.tracker_model."
    save_file({("tracker_model." + k[len(double):] if k.startswith(double) else k): v for k, v in state.items()},
              weights, metadata={"format": "pt"})
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path
