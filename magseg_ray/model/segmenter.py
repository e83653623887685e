"""The mapping model actor: chip records in, chip class masks out (written as chip outputs).

:class:`ChipSegmenter` is a Ray Data callable class: each actor loads the model once (on its GPU
when it has one) and answers every patch of a chip with :func:`~magseg_ray.model.generate.answer_chip`
(prefix reuse, constrained decoding). The chip's classes and per-patch confidence are written
atomically to the run's files before the record is returned, so a chip that has come out of the
actor is finished even if the job dies right after.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from magseg_ray.errors import ConfigError, MagsegError
from magseg_ray.prompt import PromptConfig

MODEL_CARD = "magseg.json"
"""File in a model folder that records the prompt settings the model was trained with."""


@dataclass(frozen=True)
class ModelPrompt:
    """Prompt settings a model was trained with (``magseg.json`` in its folder)."""

    schema: str = "fields3"
    """Label schema of the answers."""
    patch_size: int = 32
    """Patch side in pixels."""
    chip_size: int = 512
    """Chip side in pixels the model saw as global context."""
    local_crop: bool = True
    """Whether prompts show the local crop."""
    crop_scale: float = 2.0
    """Side of the local crop as a multiple of the patch side."""
    boundary_width: int = PromptConfig.boundary_width
    """Half-width in pixels of the boundary class in the answers the model was trained on."""
    answer_format: str = "rrle"
    """Mask text the model writes (``rrle`` or ``anchored``; a card without it means ``rrle``)."""

    def prompt(self) -> PromptConfig:
        return PromptConfig(schema=self.schema, patch_size=self.patch_size, local_crop=self.local_crop,
                            crop_scale=self.crop_scale, boundary_width=self.boundary_width,
                            answer_format=self.answer_format)


def read_model_prompt(model_dir: str | Path) -> ModelPrompt | None:
    """The model folder's prompt settings, or None for a checkpoint without ``magseg.json``."""
    path = Path(model_dir) / MODEL_CARD
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        return ModelPrompt(**{k: values[k] for k in ModelPrompt.__dataclass_fields__ if k in values})
    except (json.JSONDecodeError, TypeError) as e:
        raise ConfigError(f"{path}: not a valid model prompt card: {e}") from None


def check_model_prompt(model_dir: str | Path, prompt: PromptConfig) -> None:
    """Raise :class:`ConfigError` if the model folder's ``magseg.json`` records prompt settings other
    than ``prompt``'s: training on prompts a model was not built for wastes the run silently."""
    card = read_model_prompt(model_dir)
    if card is None:
        return
    ours = {k: getattr(prompt, k) for k in ("schema", "patch_size", "local_crop", "crop_scale")}
    theirs = {k: getattr(card, k) for k in ours}
    differ = [f"{k} {ours[k]!r} (model: {theirs[k]!r})" for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ConfigError(f"{Path(model_dir) / MODEL_CARD}: the model was built for other prompts: "
                          f"{', '.join(differ)}; pass the model's values")


def write_model_prompt(model_dir: str | Path, settings: ModelPrompt) -> None:
    from magseg_ray.files import write_atomic

    write_atomic(Path(model_dir) / MODEL_CARD, json.dumps(asdict(settings), indent=1))


class ChipSegmenter:
    """Ray Data ``map`` class: a chip record (from ``mapping_chips``) -> its output summary."""

    def __init__(self, model_dir: str, prompt: PromptConfig, batch_size: int, max_new_tokens: int | None,
                 files_root: str, store=None, threads: int | None = None):
        import torch

        from magseg_ray.model.checkpoint import load_model
        from magseg_ray.model.generate import GenerationSettings
        from magseg_ray.stitch.outputs import RunFiles

        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model, self.processor = load_model(model_dir, dtype=dtype, device=device)
        self.prompt = prompt
        self.settings = GenerationSettings(batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.files = RunFiles(files_root, store)

    def segment(self, image: np.ndarray, valid: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Classes (255 where no patch answered or not valid) and the patch confidence grid (NaN
        where no patch was asked) of one chip."""
        from magseg_ray.model.generate import answer_chip
        from magseg_ray.stitch.outputs import NO_DATA

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
        from magseg_ray.stitch.outputs import chip_file, encode_chip

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
