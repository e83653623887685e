"""Offline Gemma3 presets: the same architecture as Gemma3 4B/12B, small enough for a laptop CPU.

``tiny`` (< 1M parameters) is for tests; ``small`` (5-30M) is the demo model's base, trainable on
two CPU cores in under an hour. Both are real ``Gemma3ForConditionalGeneration`` models (SigLIP
vision tower, multimodal projector, Gemma3 decoder) with random weights and the project tokenizer,
built without any download and saved with ``save_pretrained`` in the layout of a hub checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    GenerationConfig,
)

from magseg_ray.errors import ConfigError
from magseg_ray.model.tokenizer import BOI, END_OF_TURN, EOI, IMAGE, build_tokenizer


@dataclass(frozen=True)
class Preset:
    """Sizes of an offline Gemma3 model."""

    hidden_size: int
    """Decoder width."""
    intermediate_size: int
    """Decoder MLP width."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Decoder attention heads."""
    num_kv_heads: int
    """Decoder key/value heads (grouped-query attention)."""
    head_dim: int
    """Decoder attention head width."""
    vision_hidden_size: int
    """SigLIP width."""
    vision_intermediate_size: int
    """SigLIP MLP width."""
    vision_layers: int
    """SigLIP layers."""
    vision_heads: int
    """SigLIP attention heads."""
    image_size: int
    """Side in pixels that every image is resized to."""
    vision_patch_size: int
    """SigLIP patch side in pixels."""
    mm_tokens_per_image: int
    """Soft tokens per image after the projector's pooling (a square number)."""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(64, 128, 2, 2, 1, 32, 32, 64, 2, 2, 64, 8, 16),
    "small": Preset(256, 1024, 6, 4, 2, 64, 192, 768, 4, 4, 128, 16, 64),
}


def build_model(preset: str, seed: int = 0, corpus: list[str] | None = None
                ) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """A randomly initialised Gemma3 image-text-to-text model and its processor, fully offline;
    the tokenizer's words come from ``corpus`` (default: the patch prompts')."""
    from magseg_ray.prompt import prompt_corpus

    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    tokenizer = build_tokenizer(prompt_corpus() if corpus is None else corpus)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=p.hidden_size,
            intermediate_size=p.intermediate_size,
            num_hidden_layers=p.num_layers,
            num_attention_heads=p.num_heads,
            num_key_value_heads=p.num_kv_heads,
            head_dim=p.head_dim,
            query_pre_attn_scalar=p.head_dim,
            max_position_embeddings=4096,
            sliding_window=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=p.vision_hidden_size,
            intermediate_size=p.vision_intermediate_size,
            num_hidden_layers=p.vision_layers,
            num_attention_heads=p.vision_heads,
            image_size=p.image_size,
            patch_size=p.vision_patch_size,
            vision_use_head=False,
        ),
        mm_tokens_per_image=p.mm_tokens_per_image,
        boi_token_index=ids(BOI),
        eoi_token_index=ids(EOI),
        image_token_index=ids(IMAGE),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # Gemma3 initialises the projector's matrix to zeros, which is harmless under a pretrained
    # checkpoint but fatal from scratch: image tokens are all zero and the vision tower gets no
    # gradient, so a preset trained from random weights learns to ignore the image. Start it at
    # 1/sqrt(fan-in) instead.
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projection.normal_(0.0, projection.shape[0] ** -0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, ids(END_OF_TURN)],
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": p.image_size, "width": p.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(image_processor, tokenizer, image_seq_length=p.mm_tokens_per_image)
    return model, processor
