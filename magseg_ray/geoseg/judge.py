"""The optional MLLM judge: 1-5 Likert scores of a prediction against the truth, from an overlay.

The judge (any grounder-kind checkpoint, :class:`~.grounder.Grounder`'s loading and chat
formatting) sees the scene with the truth in green and the prediction in red (overlap yellow)
and the :data:`~.prompts.JUDGE` instruction, and answers JSON scores of ``faithfulness``,
``localization`` and ``robustness``. :func:`parse_scores` reads them; a score that is missing,
not a number or outside 1-5 counts 3 (the scale's middle, as the paper does), and the record
says which ones were defaulted.
"""

from __future__ import annotations

import json
import re

import numpy as np

from magseg_ray.geoseg.prompts import JUDGE

ASPECTS = ("faithfulness", "localization", "robustness")
DEFAULT_SCORE = 3


def judge_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The scene with truth in green, prediction in red and their overlap in yellow (half blended)."""
    colour = np.zeros(image.shape, np.float32)
    colour[..., 0] = pred * 255
    colour[..., 1] = truth * 255
    either = (truth | pred)[..., None]
    return np.where(either, 0.5 * image + 0.5 * colour, image).astype(np.uint8)


def parse_scores(text: str) -> dict:
    """``{aspect: 1..5}`` plus ``defaulted`` (aspects that fell back to 3) from a judge's answer."""
    found = {}
    for match in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.update({str(k).lower(): v for k, v in obj.items()})
    scores, defaulted = {}, []
    for aspect in ASPECTS:
        value = found.get(aspect)
        if value is None:
            loose = re.search(rf"{aspect}\W+(\d+(?:\.\d+)?)", text or "", re.I)
            value = loose.group(1) if loose else None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not 1 <= number <= 5:
            scores[aspect] = DEFAULT_SCORE
            defaulted.append(aspect)
        else:
            scores[aspect] = number
    return {**scores, "defaulted": defaulted}


def judge(grounder, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, query: str) -> dict:
    """Ask a loaded :class:`~.grounder.Grounder` model to score ``pred``; returns scores and its answer."""
    import torch
    from PIL import Image

    overlay = Image.fromarray(judge_overlay(image, truth.astype(bool), pred.astype(bool)))
    inputs = grounder.chat_inputs(overlay, JUDGE.format(query=query))
    n = int(inputs["input_ids"].shape[1])
    with torch.no_grad():
        out = grounder.model.generate(**inputs, max_new_tokens=grounder.max_new_tokens, do_sample=False)
    tokenizer = getattr(grounder.processor, "tokenizer", grounder.processor)
    text = tokenizer.decode(out[0, n:], skip_special_tokens=True)
    return {**parse_scores(text), "answer": text}
