"""CLIP Surgery on transformers' ``CLIPModel``: a similarity map of a crop against a phrase.

Follows the reference (the CLIP_Surgery repository, ``clip/clip_surgery_model.py`` and
``clip_feature_surgery``):

- **Architecture surgery.** Through the last ``blocks`` encoder layers a second path runs next to
  the original one. At each of those layers the new path adds ``out_proj(softmax(v v^T / sqrt(d)) v)``
  (the layer's own value projection used as query and key, no MLP) computed from the *original*
  path's ``layer_norm1`` output; it starts from the original tokens entering the first surgery
  layer. The original path is untouched (:func:`image_tokens` returns it too, and it equals
  ``CLIPVisionModel``'s output exactly). The CLS token is taken from the original path; then
  ``post_layernorm`` and ``visual_projection`` are applied to every token.
- **Feature surgery.** Text features are the prompt-template ensemble (each template encoded,
  L2-normalised, averaged, normalised again); the phrase's features minus the empty prompt's
  (the redundant features) are dotted with the L2-normalised image tokens.
- **Map.** CLS dropped, min-max normalised to [0, 1], reshaped to the patch grid, bilinearly
  upsampled to the crop.

The crop is resized to ``input_size`` (position embeddings interpolated), normalised with the
checkpoint's mean/std; no centre crop, so the map covers the whole crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from magseg_ray.geoseg.loading import Placement

TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a photo of the {}.",
    "a close-up photo of a {}.", "a bright photo of a {}.", "a cropped photo of the {}.",
    "a photo of the large {}.", "a photo of the small {}.", "a low resolution photo of a {}.",
    "a blurry photo of a {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "a satellite photo of a {}.",
    "an aerial photo of a {}.", "a top-down view of a {}.",
)
"""Prompt templates of the ensemble: a subset of the reference's ImageNet templates (its scene
templates included) plus three overhead-view ones for remote sensing."""


@torch.no_grad()
def vv_attention(attn, hidden: torch.Tensor) -> torch.Tensor:
    """The surgery path's attention of a ``CLIPAttention`` on ``hidden`` (B x N x C): value-value
    self-attention with the layer's own v and out projections."""
    b, n, c = hidden.shape
    v = attn.v_proj(hidden).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
    weights = torch.softmax((v @ v.transpose(-2, -1)) * attn.scale, dim=-1)
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, c))


@torch.no_grad()
def image_tokens(clip, pixel_values: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(surgery tokens projected to the joint space, B x N x P; original path's last hidden state)."""
    vt = clip.vision_model  # a CLIPVisionModel (embeddings, pre_layrnorm, encoder, post_layernorm)
    x = vt.pre_layrnorm(vt.embeddings(pixel_values, interpolate_pos_encoding=True))
    layers = vt.encoder.layers
    start = max(len(layers) - blocks, 0)
    new = None
    for i, layer in enumerate(layers):
        if i >= start:
            vv = vv_attention(layer.self_attn, layer.layer_norm1(x))
            new = (x if new is None else new) + vv
        x = layer(x, attention_mask=None)
    new = (x if new is None else new).clone()
    new[:, 0] = x[:, 0]
    return clip.visual_projection(vt.post_layernorm(new)), x


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict:
    """Token ids for CLIP's text tower: each text ends with the end-of-text token (CLIP pools there),
    right-padded with the pad (else end) token, cut to ``max_length``."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for ids in tokenizer(texts)["input_ids"]:
        ids = list(ids)[: max_length - 1]
        rows.append(ids if ids and ids[-1] == eos else ids + [eos])
    n = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return {"input_ids": input_ids, "attention_mask": mask}


@torch.no_grad()
def text_features(clip, tokenizer, phrase: str, templates=TEMPLATES) -> torch.Tensor:
    """The prompt-ensemble feature of ``phrase`` (P,), L2-normalised."""
    enc = encode_texts(tokenizer, [t.format(phrase) for t in templates], clip.config.text_config.max_position_embeddings)
    enc = {k: v.to(clip.device) for k, v in enc.items()}
    feats = clip.get_text_features(**enc).pooler_output
    mean = F.normalize(feats, dim=-1).mean(0)
    return F.normalize(mean, dim=-1)


def feature_surgery(image: torch.Tensor, text: torch.Tensor, redundant: torch.Tensor) -> torch.Tensor:
    """Similarity of each (L2-normalised) image token to ``text - redundant``: N x P, P, P -> N."""
    return F.normalize(image, dim=-1) @ (text - redundant)


def similarity_map(tokens_similarity: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """CLS dropped, min-max normalised, reshaped to ``grid`` and upsampled to ``size`` (h, w)."""
    sim = tokens_similarity[1:]
    lo, hi = sim.min(), sim.max()
    sim = (sim - lo) / (hi - lo) if hi > lo else torch.zeros_like(sim)
    sim = sim.reshape(1, 1, *grid)
    return F.interpolate(sim, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class ClipSurgery:
    """A loaded CLIP with its tokenizer and image settings, answering similarity maps."""

    clip: object
    tokenizer: object
    image: object
    """:class:`~magseg_ray.geoseg.loading.ImageSettings`: input size, mean, std."""
    blocks: int = 6
    """Last encoder layers that get the surgery path (the reference's 6 for ViT-B)."""
    placement: Placement = Placement()
    """Device and dtype of ``clip``."""

    @classmethod
    def load(cls, path, blocks: int = 6, placement: Placement = Placement()) -> "ClipSurgery":
        from transformers import CLIPModel

        from magseg_ray.geoseg.loading import image_settings, load_pretrained, load_tokenizer, model_type

        model_type(path, ("clip",), "CLIP model")
        clip = load_pretrained(CLIPModel, path, "CLIP model", placement)
        size = clip.config.vision_config.image_size
        settings = image_settings(path, size, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        return cls(clip, load_tokenizer(path, "CLIP model"), settings, blocks, placement)

    def phrase_problem(self, phrase: str) -> str | None:
        """Why ``phrase`` cannot be encoded whole (its longest prompt template is over CLIP's text
        context, which would cut it), or None."""
        eos, limit = self.tokenizer.eos_token_id, self.clip.config.text_config.max_position_embeddings
        ids = self.tokenizer([t.format(phrase) for t in TEMPLATES])["input_ids"]
        n = max(len(i) + (not i or i[-1] != eos) for i in ids)
        if n > limit:
            return (f"is too long for route A's CLIP text encoder: {n} tokens in its longest prompt template, "
                    f"over its context of {limit}")
        return None

    @torch.no_grad()
    def similarity(self, crop: np.ndarray, phrase: str) -> np.ndarray:
        """Min-max normalised similarity of ``crop`` (H x W x 3 uint8) to ``phrase``, H x W in [0, 1]."""
        from magseg_ray.geoseg.loading import to_pixels

        pixels = self.placement.put(to_pixels(crop, self.image))
        tokens, _ = image_tokens(self.clip, pixels, self.blocks)
        patch = self.clip.config.vision_config.patch_size
        grid = (pixels.shape[2] // patch, pixels.shape[3] // patch)
        sim = feature_surgery(tokens[0], text_features(self.clip, self.tokenizer, phrase),
                              text_features(self.clip, self.tokenizer, ""))
        return similarity_map(sim.float().cpu(), grid, crop.shape[:2])
