"""The promptable segmenters of the two routes, with pre- and post-processing written here.

- :class:`PointSegmenter` (route A): ``SamModel`` (a SAM folder), ``Sam2Model`` (SAM 2 / 2.1
  folders, ``model_type`` ``sam2``) or ``Sam3TrackerModel`` (a SAM3 tracker folder, or the
  hub's SAM3 folder, ``sam3_video``, whose tracker it reads) with the keypoints as positive point
  prompts of one object. SAM resizes the longest side to its input size and pads bottom-right
  (the SAM processor's rule); SAM2 and the SAM3 tracker stretch to their square input (the
  SAM2/3 processors' rule). Points are mapped the same way. With one point SAM answers three
  masks and the one with the best predicted IoU is taken; with several, one mask.
- :class:`TextSegmenter` (route B): ``Sam3Model`` (a ``sam3`` folder, or the detector of the
  hub's ``sam3_video`` folder) with the phrase as text. ``Sam3Processor``
  needs torchvision, which cannot be installed next to this CPU torch, so pre-processing is
  resize to the checkpoint's size, /255, mean/std from its ``preprocessor_config.json``;
  post-processing (``Sam3ImageProcessor.post_process_instance_segmentation``'s rule) keeps
  instances with ``sigmoid(logit) x sigmoid(presence) > threshold``, resizes their mask
  probabilities (sigmoid of the logits) bilinearly to the crop and unions ``> mask_threshold``.

Both take a crop (``H x W x 3`` uint8) and return an ``H x W`` bool mask, or None when they
have nothing to say (no points; no instance over the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from magseg_ray.geoseg.loading import (
    ImageSettings,
    Placement,
    image_settings,
    load_pretrained,
    load_tokenizer,
    model_type,
    to_pixels,
)

POINT_MODELS = {"sam": "SamModel", "sam2": "Sam2Model", "sam3_tracker": "Sam3TrackerModel",
                "sam3_video": "Sam3TrackerModel"}
"""``model_type`` values :class:`PointSegmenter` accepts and the transformers class each loads."""
TEXT_MODELS = ("sam3", "sam3_video")
"""``model_type`` values :class:`TextSegmenter` accepts (``Sam3Model`` reads a video folder's detector)."""
IMAGENET = {"sam", "sam2"}
"""Point models normalised with ImageNet mean/std by default (the SAM3 tracker: 0.5)."""
SAM_MEAN, SAM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


@dataclass
class PointSegmenter:
    """Route A's segmenter: a SAM, SAM2 or SAM3 tracker model (:data:`POINT_MODELS`)."""

    model: object
    kind: str
    image: ImageSettings
    mask_threshold: float = 0.5
    placement: Placement = Placement()
    last_score: float | None = None
    """The last mask's predicted IoU (the model's own score of the mask it answered)."""

    @classmethod
    def load(cls, path, mask_threshold: float = 0.5, placement: Placement = Placement()) -> "PointSegmenter":
        import transformers

        kind = model_type(path, tuple(POINT_MODELS), "point-prompt segmenter")
        model = load_pretrained(getattr(transformers, POINT_MODELS[kind]), path, "point-prompt segmenter", placement)
        size = model.config.prompt_encoder_config.image_size
        mean, std = (SAM_MEAN, SAM_STD) if kind in IMAGENET else ((0.5,) * 3, (0.5,) * 3)
        return cls(model, kind, image_settings(path, size, mean, std), mask_threshold, placement)

    def _frame(self, h: int, w: int) -> tuple[tuple[int, int], tuple[float, float]]:
        """(resized height, width) of a crop inside the model's input, and the x/y scale to it."""
        side_h, side_w = self.image.size
        if self.kind == "sam":
            s = max(side_h, side_w) / max(h, w)
            rh, rw = max(int(h * s + 0.5), 1), max(int(w * s + 0.5), 1)
            return (rh, rw), (rw / w, rh / h)
        return (side_h, side_w), (side_w / w, side_h / h)

    def prepare(self, crop: np.ndarray, points: list[tuple[int, int, float]]):
        """The model inputs of a crop and its keypoints: pixel values (resized, normalised, padded
        bottom-right to the input size), point coordinates (pixel centres, scaled as the image) and labels."""
        h, w = crop.shape[:2]
        (rh, rw), (sx, sy) = self._frame(h, w)
        pixels = to_pixels(crop, ImageSettings((rh, rw), self.image.mean, self.image.std))
        side_h, side_w = self.image.size
        pixels = F.pad(pixels, (0, side_w - rw, 0, side_h - rh))
        xy = torch.tensor([[[[(x + 0.5) * sx, (y + 0.5) * sy] for x, y, _ in points]]], dtype=torch.float32)
        return pixels, xy, torch.ones(xy.shape[:3], dtype=torch.long)

    def upscale(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """A low-resolution mask's logits at the crop's ``h x w``: SAM's rule (bilinear to the padded
        input, crop the padding, bilinear to the crop: ``SamProcessor.post_process_masks``), or SAM2's
        and the SAM3 tracker's (bilinear straight to the crop: ``Sam2ImageProcessor.post_process_masks``)."""
        if self.kind != "sam":
            return _upsample(logits, (h, w))
        (rh, rw), _ = self._frame(h, w)
        return _upsample(_upsample(logits, self.image.size)[:rh, :rw], (h, w))

    @torch.no_grad()
    def __call__(self, crop: np.ndarray, points: list[tuple[int, int, float]]) -> np.ndarray | None:
        if not points:
            return None
        pixels, xy, labels = self.prepare(crop, points)
        put = self.placement.put
        out = self.model(pixel_values=put(pixels), input_points=put(xy), input_labels=put(labels),
                         multimask_output=len(points) == 1)
        masks, scores = out.pred_masks[0, 0].float().cpu(), out.iou_scores[0, 0].float().cpu()
        best = int(scores.argmax())
        self.last_score = float(scores[best])
        return (self.upscale(masks[best], *crop.shape[:2]) > _logit(self.mask_threshold)).numpy()


@dataclass
class TextSegmenter:
    """Route B's segmenter: ``Sam3Model`` prompted with the phrase."""

    model: object
    tokenizer: object
    image: ImageSettings
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    placement: Placement = Placement()
    last_score: float | None = None
    """The best score of the instances the last mask unions (None: no instance over the threshold)."""

    @classmethod
    def load(cls, path, score_threshold: float = 0.5, mask_threshold: float = 0.5,
             placement: Placement = Placement()) -> "TextSegmenter":
        from transformers import Sam3Model

        model_type(path, TEXT_MODELS, "text-prompt segmenter (SAM3)")
        model = load_pretrained(Sam3Model, path, "text-prompt segmenter (SAM3)", placement)
        settings = image_settings(path, model.config.vision_config.image_size)
        return cls(model, load_tokenizer(path, "SAM3 model"), settings, score_threshold, mask_threshold, placement)

    def phrase_problem(self, phrase: str) -> str | None:
        """Why ``phrase`` cannot be encoded whole (over SAM3's text context, which would cut it), or None."""
        n = len(self.tokenizer([phrase])["input_ids"][0])
        limit = self.model.config.text_config.max_position_embeddings
        if n > limit:
            return f"is too long for route B's SAM3 text encoder: {n} tokens, over its context of {limit}"
        return None

    def _text(self, phrase: str) -> dict:
        n = self.model.config.text_config.max_position_embeddings
        enc = self.tokenizer([phrase], padding="max_length", max_length=n, truncation=True, return_tensors="pt")
        return {k: self.placement.put(enc[k]) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def instances(self, crop: np.ndarray, phrase: str) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and mask probabilities at the crop's size (N x H x W) of every query instance."""
        out = self.model(pixel_values=self.placement.put(to_pixels(crop, self.image)), **self._text(phrase))
        return self.postprocess(out.pred_logits[0], out.presence_logits[0, 0], out.pred_masks[0], crop.shape[:2])

    @staticmethod
    def postprocess(logits, presence, masks, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``Sam3ImageProcessor.post_process_instance_segmentation``'s rule: score = sigmoid(logit) x
        sigmoid(presence); masks are sigmoid probabilities resized bilinearly to ``size``."""
        scores = (torch.sigmoid(logits.float()) * torch.sigmoid(presence.float())).cpu()
        probs = F.interpolate(torch.sigmoid(masks.float())[None].cpu(), size=size, mode="bilinear", align_corners=False)[0]
        return scores.numpy(), probs.numpy()

    def __call__(self, crop: np.ndarray, phrase: str) -> np.ndarray | None:
        scores, probs = self.instances(crop, phrase)
        keep = scores > self.score_threshold
        self.last_score = float(scores[keep].max()) if keep.any() else None
        if not keep.any():
            return None
        return (probs[keep] > self.mask_threshold).any(0)
