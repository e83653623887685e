"""The mapping model: whole chips in, chip class masks and patch confidences out.

:class:`ChipSegmenter` loads the model once (on the GPU when there is one) and answers every patch
of several chips in one call of :func:`~magseg_ray.model.batching.answer_chips` (prefix reuse,
constrained decoding, continuous batching *across* the chips: while one chip's few long answers
finish, the next chip's patches fill the batch). It is built from the model card its caller read
(the mapping stage, :class:`~magseg_ray.map_region.ChipMapper`, and the tile server), and writes
nothing. A chip the model cannot take (a :class:`~magseg_ray.errors.MagsegError`) fails alone: the
batch is answered again chip by chip and only that chip gets the error.
"""

from __future__ import annotations

import numpy as np
import torch

from magseg_ray.errors import MagsegError
from magseg_ray.masks.schemas import NO_DATA
from magseg_ray.model.batching import answer_chips
from magseg_ray.model.card import ModelPrompt
from magseg_ray.model.checkpoint import load_model
from magseg_ray.model.generate import GenerationSettings


class ChipSegmenter:
    """A loaded model answering whole chips with the prompts and decoding of its card."""

    def __init__(self, model_dir: str, card: ModelPrompt, batch_size: int, max_new_tokens: int | None,
                 threads: int | None = None, dtype: str = "auto"):
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.processor = load_model(model_dir, dtype=dtype, device=device)
        self.prompt = card.prompt()
        self.settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                           boundary_bias=card.boundary_bias)

    def segment(self, image: np.ndarray, valid: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Classes (NO_DATA where no patch answered or not valid) and the patch confidence grid (NaN
        where no patch was asked) of one chip; a :class:`MagsegError` if the model cannot take it."""
        result = self.segment_chips([(image, valid, boxes)])[0]
        if isinstance(result, MagsegError):
            raise result
        return result

    def segment_chips(self, chips: list) -> list:
        """:meth:`segment` for several ``(image, valid, boxes)`` chips, decoded in one continuous
        batch. A chip the model cannot take gets its :class:`MagsegError` in its place: the batch is
        answered again chip by chip, so only that chip fails."""
        p = self.prompt.patch_size
        try:
            answers = answer_chips(self.model, self.processor, [(image, boxes) for image, _, boxes in chips],
                                   self.prompt, self.settings)
        except MagsegError as e:
            return [e] if len(chips) == 1 else [self.segment_chips([chip])[0] for chip in chips]
        out = []
        for (_, valid, _), chip_answers in zip(chips, answers):
            classes = np.full(valid.shape, NO_DATA, np.uint8)
            confidence = np.full((valid.shape[0] // p, valid.shape[1] // p), np.nan, np.float32)
            for a in chip_answers:
                x0, y0, x1, y1 = a.box
                classes[y0:y1, x0:x1] = a.mask
                confidence[y0 // p, x0 // p] = a.confidence
            classes[~valid] = NO_DATA
            out.append((classes, confidence))
        return out
