"""The optional MLLM judge: 1-5 Likert scores of a prediction against the truth, from an overlay.

The judge (any grounder-kind checkpoint, :class:`~.grounder.Grounder`'s loading and chat
formatting) sees the scene with the truth in green and the prediction in red (overlap yellow)
and the :data:`~.prompts.JUDGE` instruction, and answers JSON scores of ``faithfulness``,
``localization`` and ``robustness`` (the three aspects the paper's judge table reports).
:func:`parse_scores` reads them; a score that is missing, not a number or outside 1-5 is None
and listed in ``unparsed``: it is counted, never replaced by a made-up middle score, and
:func:`summarise_judge` averages only the scores given.
"""

from __future__ import annotations

import json
import re

import numpy as np

from magseg_ray.geoseg.prompts import JUDGE

ASPECTS = ("faithfulness", "localization", "robustness")


def judge_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The scene with truth in green, prediction in red and their overlap in yellow (half blended)."""
    colour = np.zeros(image.shape, np.float32)
    colour[..., 0] = pred * 255
    colour[..., 1] = truth * 255
    either = (truth | pred)[..., None]
    return np.where(either, 0.5 * image + 0.5 * colour, image).astype(np.uint8)


def parse_scores(text: str) -> dict:
    """``{aspect: 1..5 or None}`` plus ``unparsed`` (the aspects with no valid score) from a judge's answer."""
    found = {}
    for match in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.update({str(k).lower(): v for k, v in obj.items()})
    scores, unparsed = {}, []
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
            scores[aspect] = None
            unparsed.append(aspect)
        else:
            scores[aspect] = number
    return {**scores, "unparsed": unparsed}


def summarise_judge(scores: list[dict]) -> dict:
    """Over a list of :func:`parse_scores` records: the mean of each aspect over the answers that
    gave it (None when none did), how many were judged, and how many answers left each aspect unparsed."""
    out = {}
    for aspect in ASPECTS:
        given = [s[aspect] for s in scores if s.get(aspect) is not None]
        out[aspect] = sum(given) / len(given) if given else None
        out[f"{aspect}_unparsed"] = len(scores) - len(given)
    return {**out, "judged": len(scores)}


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
