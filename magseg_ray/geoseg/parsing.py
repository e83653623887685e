"""A grounder's answer text -> a box in image pixels and a short phrase, or the reason there is none.

Answers come in many shapes; all of these parse:

- JSON anywhere in the text, bare or in a Markdown fence (```` ```json ... ``` ````), before, after
  or inside a ``<think>...</think>`` block (fences outside the think block win, then the text
  outside it, then its inside); a list of objects gives its first object with a box;
- box keys ``bbox_2d``, ``bbox`` or ``box`` (any case), as four numbers or two ``[x, y]`` corners;
  phrase keys ``label``, ``prompt`` or ``phrase``; JSON that a model wrote loosely (single quotes,
  trailing commas) still gives its ``"bbox_2d": [..]`` by pattern;
- reversed corners (x2 < x1) are put in order later, by :func:`.boxes.clamp_box`;
- PaliGemma's ``<locYYYY><locXXXX><locYYYY><locXXXX> phrase`` (y first, bins of 1/1024).

Coordinates are turned into pixels of the full image by the grounder's convention
(:data:`CONVENTIONS`). Anything else (no box, three numbers, text) gives ``box=None`` and a reason:
the pipeline then returns an empty mask with that reason recorded, never a crash.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

CONVENTIONS = {
    "pixels": "pixels of the resized image the model saw (Qwen2.5-VL)",
    "norm1000": "0-1000 of the image's width and height (Qwen3-VL; Gemma3 when prompted for it)",
    "loc1024": "PaliGemma <locNNNN> tokens, y first, NNNN/1024 of the height/width",
}
"""Box coordinate conventions of the grounders, by name."""

BOX_KEYS = ("bbox_2d", "bbox", "box")
PHRASE_KEYS = ("label", "prompt", "phrase")

_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.S)
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)
_LOOSE_BOX = re.compile(r"""["']?(?:bbox_2d|bbox|box)["']?\s*[:=]\s*\[([^\]]*(?:\][^\]]*)?)\]""", re.I)
_LOOSE_PHRASE = re.compile(r"""["']?(?:label|prompt|phrase)["']?\s*[:=]\s*["']([^"']*)["']""", re.I)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LOC = re.compile(r"((?:<loc\d{4}>){4})\s*([^;<\n]*)")


@dataclass(frozen=True)
class Parsed:
    """What an answer says: a box in full-image pixels (unclamped) and a phrase, or why not."""

    box: tuple[float, float, float, float] | None
    phrase: str
    reason: str = ""
    """Empty when a box was found; otherwise why none was."""


def _candidates(text: str) -> list[str]:
    """Places to look for JSON, in order of trust."""
    outside = _THINK.sub(" ", text)
    inside = " ".join(_THINK.findall(text))
    return [*_FENCE.findall(outside), outside, *_FENCE.findall(inside), inside]


def _objects(text: str):
    """Every JSON value that starts at a ``{`` or ``[`` of ``text`` (dicts, and dicts in lists)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch not in "{[":
            continue
        try:
            value, _ = decoder.raw_decode(text, i)
        except ValueError:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, dict):
                yield v


def _four(value) -> list[float] | None:
    """Four finite numbers from ``[x1, y1, x2, y2]`` or ``[[x1, y1], [x2, y2]]`` (numbers may be strings)."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        value = [*value[0], *value[1]]
    if not isinstance(value, list) or len(value) != 4:
        return None
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return numbers if all(math.isfinite(v) for v in numbers) else None


def _lookup(obj: dict, keys: tuple[str, ...]):
    lower = {str(k).lower(): v for k, v in obj.items()}
    return next((lower[k] for k in keys if k in lower), None)


def _json_box(text: str) -> tuple[list[float], str] | None:
    for candidate in _candidates(text):
        for obj in _objects(candidate):
            numbers = _four(_lookup(obj, BOX_KEYS))
            if numbers is not None:
                phrase = _lookup(obj, PHRASE_KEYS)
                return numbers, phrase.strip() if isinstance(phrase, str) else ""
    return None


def _loose_box(text: str) -> tuple[list[float], str] | None:
    """``"bbox_2d": [..]`` found by pattern in JSON too loose to decode."""
    for candidate in _candidates(text):
        match = _LOOSE_BOX.search(candidate)
        if match:
            numbers = [float(v) for v in _NUMBER.findall(match.group(1))]
            if len(numbers) == 4:
                phrase = _LOOSE_PHRASE.search(candidate)
                return numbers, phrase.group(1).strip() if phrase else ""
    return None


def _scale(numbers: list[float], convention: str, size: tuple[int, int],
           seen: tuple[int, int] | None) -> tuple[float, float, float, float]:
    """``numbers`` (x1, y1, x2, y2 in the convention) -> full-image pixels of ``size`` = (width, height)."""
    w, h = size
    if convention == "pixels":
        sw, sh = seen or size
        fx, fy = w / sw, h / sh
    elif convention == "norm1000":
        fx, fy = w / 1000, h / 1000
    else:
        raise ValueError(f"unknown box convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    x1, y1, x2, y2 = numbers
    return x1 * fx, y1 * fy, x2 * fx, y2 * fy


def _loc_box(text: str, size: tuple[int, int]) -> Parsed:
    match = _LOC.search(text)
    if not match:
        return Parsed(None, "", "no <loc> box in the answer")
    y1, x1, y2, x2 = (int(v) / 1024 for v in re.findall(r"\d{4}", match.group(1)))
    w, h = size
    return Parsed((x1 * w, y1 * h, x2 * w, y2 * h), match.group(2).strip())


def parse_answer(text: str, convention: str, size: tuple[int, int], seen: tuple[int, int] | None = None) -> Parsed:
    """Parse a grounder's answer for an image of ``size`` = (width, height); ``seen`` is the
    (width, height) of the resized image the model saw, for the ``pixels`` convention."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown box convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, "", "the grounder's answer is empty")
    if convention == "loc1024":
        return _loc_box(text, size)
    found = _json_box(text) or _loose_box(text)
    if found is None:
        return Parsed(None, "", f"no box in the grounder's answer: {text.strip()[:120]!r}")
    numbers, phrase = found
    return Parsed(_scale(numbers, convention, size, seen), phrase)
