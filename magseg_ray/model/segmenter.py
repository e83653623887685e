"""The mapping model actor: chip records in, chip class masks out (written as chip outputs).

:class:`ChipSegmenter` is a Ray Data callable class: each actor loads the model once (on its GPU
when it has one) and answers every patch of a chip with :func:`~magseg_ray.model.generate.answer_chip`
(prefix reuse, constrained decoding). The chip's classes and per-patch confidence are written
atomically to the run's files before the record is returned, so a chip that has come out of the
actor is finished even if the job dies right after.
"""

from __future__ import annotations

import time

import numpy as np

from magseg_ray.errors import MagsegError
from magseg_ray.prompt import PromptConfig


class ChipSegmenter:
    """Ray Data ``map`` class: a chip record (from ``mapping_chips``) -> its output summary."""

    def __init__(self, model_dir: str, prompt: PromptConfig, batch_size: int, max_new_tokens: int | None,
                 files_root: str, store=None, threads: int | None = None):
        import torch

        from magseg_ray.model.card import ModelPrompt, read_model_prompt
        from magseg_ray.model.checkpoint import load_model
        from magseg_ray.model.generate import GenerationSettings
        from magseg_ray.run_files import RunFiles

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model, self.processor = load_model(model_dir, dtype=dtype, device=device)
        self.prompt = prompt
        card = read_model_prompt(model_dir) or ModelPrompt()
        self.settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                           boundary_bias=card.boundary_bias)
        self.files = RunFiles(files_root, store)

    def segment(self, image: np.ndarray, valid: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Classes (NO_DATA where no patch answered or not valid) and the patch confidence grid (NaN
        where no patch was asked) of one chip."""
        from magseg_ray.model.generate import answer_chip
        from magseg_ray.masks.schemas import NO_DATA

        p = self.prompt.patch_size
        classes = np.full(valid.shape, NO_DATA, np.uint8)
        confidence = np.full((valid.shape[0] // p, valid.shape[1] // p), np.nan, np.float32)
        for a in answer_chip(self.model, self.processor, image, boxes, self.prompt, self.settings):
            x0, y0, x1, y1 = a.box
            classes[y0:y1, x0:x1] = a.mask
            confidence[y0 // p, x0 // p] = a.confidence
        classes[~valid] = NO_DATA
        return classes, confidence

    def __call__(self, row: dict) -> dict:
        from magseg_ray.run_files import chip_file, encode_chip

        out = {"chip_id": row["chip_id"], "scene_id": row["scene_id"], "error": row["error"], "patches": 0,
               "seconds": 0.0}
        if row["error"] is not None:
            return out
        start = time.perf_counter()
        boxes = [tuple(int(v) for v in b) for b in row["patches"]]
        try:
            classes, confidence = self.segment(np.asarray(row["image"]), np.asarray(row["valid"], bool), boxes)
        except MagsegError as e:
            out["error"] = f"{row['chip_id']}: {e}"
            return out
        seconds = time.perf_counter() - start
        self.files.write(chip_file(row["chip_id"]), encode_chip(classes, confidence, len(boxes), seconds))
        out.update(patches=len(boxes), seconds=seconds)
        return out
