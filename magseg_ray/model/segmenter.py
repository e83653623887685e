"""The mapping model actor: chip records in, chip class masks out (written as chip outputs).

:class:`ChipSegmenter` is a Ray Data callable class: each actor loads the model once (on its GPU
when it has one) and answers every patch of a batch of chips in one call of
:func:`~magseg_ray.model.batching.answer_chips` (prefix reuse, constrained decoding, continuous
batching *across* the chips: while one chip's few long answers finish, the next chip's patches fill
the batch). Each chip's classes and per-patch confidence are written atomically to the run's files
before the batch is returned, so a chip that has come out of the actor is finished even if the job
dies right after. A chip the model cannot take (a :class:`~magseg_ray.errors.MagsegError`) fails
alone: the batch is answered again chip by chip and only that chip reports the error.
"""

from __future__ import annotations

import time

import numpy as np

from magseg_ray.errors import MagsegError
from magseg_ray.prompt import PromptConfig


class ChipSegmenter:
    """Ray Data ``map`` class: a chip record (from ``mapping_chips``) -> its output summary."""

    def __init__(self, model_dir: str, prompt: PromptConfig, batch_size: int, max_new_tokens: int | None,
                 files_root: str, store=None, threads: int | None = None, dtype: str = "auto"):
        import torch

        from magseg_ray.model.card import ModelPrompt, read_model_prompt
        from magseg_ray.model.checkpoint import load_model
        from magseg_ray.model.generate import GenerationSettings
        from magseg_ray.run_files import RunFiles

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.processor = load_model(model_dir, dtype=dtype, device=device)
        self.prompt = prompt
        card = read_model_prompt(model_dir) or ModelPrompt()
        self.settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens,
                                           boundary_bias=card.boundary_bias)
        self.files = RunFiles(files_root, store)

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
        from magseg_ray.model.batching import answer_chips
        from magseg_ray.masks.schemas import NO_DATA

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

    def __call__(self, batch: dict) -> dict:
        """Ray Data ``map_batches`` (numpy format): chip records -> their output summaries."""
        from magseg_ray.run_files import chip_file, encode_chip

        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["chip_id"]))]
        # a read error is a string; "none" comes through a numpy batch as None or NaN
        out = [{"chip_id": r["chip_id"], "scene_id": r["scene_id"], "error": r["error"] if isinstance(r["error"], str) else None,
                "patches": 0, "seconds": 0.0} for r in rows]
        todo = [i for i, o in enumerate(out) if o["error"] is None]
        chips = [(np.asarray(rows[i]["image"]), np.asarray(rows[i]["valid"], bool),
                  [tuple(int(v) for v in b) for b in rows[i]["patches"]]) for i in todo]
        start = time.perf_counter()
        results = self.segment_chips(chips)
        seconds = time.perf_counter() - start
        total = max(sum(len(c[2]) for c in chips), 1)
        for i, chip, result in zip(todo, chips, results):
            if isinstance(result, MagsegError):
                out[i]["error"] = f"{rows[i]['chip_id']}: {result}"
                continue
            share = seconds * len(chip[2]) / total  # the batch's time, split by patches
            self.files.write(chip_file(out[i]["chip_id"]), encode_chip(*result, len(chip[2]), share))
            out[i].update(patches=len(chip[2]), seconds=share)
        return {k: [o[k] for o in out] for k in out[0]} if out else {}
