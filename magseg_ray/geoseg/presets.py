"""Offline tiny presets of every GeoSeg component: real architectures, random weights, seconds on CPU.

:func:`build_presets` writes one checkpoint folder per component, in the layout
``save_pretrained`` gives a hub checkpoint, so the loaders read them exactly as they read real
ones: a Gemma3 grounder (the project's ``tiny`` preset with a tokenizer over GeoSeg's prompts),
a CLIP, a SAM, a SAM3 tracker and a SAM3, each with the project tokenizer where it needs text
and a ``preprocessor_config.json`` where this package pre-processes images itself. They test
plumbing and measure latency; their answers are random (a random grounder rarely writes a box).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMPONENTS = ("grounder", "clip", "sam", "sam3_tracker", "sam3")
"""Folder names :func:`build_presets` writes."""

_VIT = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=112, patch_size=14, window_size=4, global_attn_indexes=[1],
            pretrain_image_size=112)
_SAM3_VISION = dict(backbone_config=_VIT, fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]])


def _tokenizer():
    from magseg_ray.geoseg.prompts import corpus
    from magseg_ray.model.tokenizer import build_tokenizer

    return build_tokenizer(corpus())


def _text_ids(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)


def _image_config(path: Path, side: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> None:
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": side, "width": side}, "image_mean": list(mean), "image_std": list(std)}))


def _save(model, path: Path, tokenizer=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def clip_model(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, **_text_ids(tokenizer))  # real CLIP's text context
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def sam_model():
    from transformers import SamConfig, SamModel

    return SamModel(SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )).eval()


def sam3_tracker_model():
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    return Sam3TrackerModel(Sam3TrackerConfig(
        vision_config=dict(model_type="sam3_vision_model", **_SAM3_VISION),
        prompt_encoder_config=dict(hidden_size=32, image_size=112, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=16),
    )).eval()


def sam3_model(tokenizer):
    """Text context 48: the preset tokenizer writes each space as a token (about twice a BPE's count),
    so it holds about the words of the real SAM3's 32 BPE tokens."""
    from transformers import Sam3Config, Sam3Model

    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    return Sam3Model(Sam3Config(
        vision_config=_SAM3_VISION,
        text_config=dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=48, **_text_ids(tokenizer)),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=8, **small),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )).eval()


def build_presets(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every tiny component under ``root``; returns ``{component: folder}``."""
    from magseg_ray.geoseg.prompts import corpus
    from magseg_ray.model.checkpoint import save_model
    from magseg_ray.model.presets import build_model

    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    model, processor = build_model("tiny", seed=seed, corpus=corpus())
    paths = {"grounder": save_model(model, processor, root / "grounder")}
    paths["clip"] = _save(clip_model(tokenizer), root / "clip", tokenizer)
    _image_config(paths["clip"], 32, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    paths["sam"] = _save(sam_model(), root / "sam")
    _image_config(paths["sam"], 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    paths["sam3_tracker"] = _save(sam3_tracker_model(), root / "sam3_tracker")
    _image_config(paths["sam3_tracker"], 112)
    paths["sam3"] = _save(sam3_model(tokenizer), root / "sam3", tokenizer)
    _image_config(paths["sam3"], 112)
    return paths
