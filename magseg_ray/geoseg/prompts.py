"""The texts GeoSeg asks models: the grounding instruction (per box convention) and the judge's.

One home for every prompt, so the tiny presets' tokenizers can be built over exactly these words.
"""

from __future__ import annotations

_COORDS = {
    "norm1000": "integers from 0 to 1000, as thousandths of the image width and height",
    "pixels": "integer pixel coordinates of the image",
}

GROUNDING = (
    "You are looking at an overhead (satellite or aerial) image. Find the one object the request "
    "describes: \"{query}\". Answer with JSON only, in this form: "
    "{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"short name of the object\"}}, where x1, y1 is the "
    "top left corner and x2, y2 the bottom right corner of the box, as {coords}."
)
"""Instruction for JSON-answering grounders (Qwen-VL, Gemma3); ``{coords}`` follows the convention."""

PALIGEMMA = "detect {query}"
"""PaliGemma's own detection prompt: it answers ``<loc....>`` tokens and the phrase."""

JUDGE = (
    "The image shows an overhead scene with the reference mask of \"{query}\" in green and the "
    "predicted mask in red (overlap in yellow). Rate the prediction from 1 (bad) to 5 (perfect) on "
    "faithfulness to the request, localization and robustness. Answer with JSON only: "
    "{{\"faithfulness\": n, \"localization\": n, \"robustness\": n}}."
)
"""Instruction of the optional MLLM judge (1-5 Likert scores; an unparsable score is counted as such)."""


def grounding_prompt(query: str, convention: str) -> str:
    """The grounding instruction for ``query`` under a box convention (see :mod:`.parsing`)."""
    if convention == "loc1024":
        return PALIGEMMA.format(query=query)
    return GROUNDING.format(query=query, coords=_COORDS[convention])


def corpus() -> list[str]:
    """Every fixed text GeoSeg sends (for offline preset tokenizers)."""
    from magseg_ray.geoseg.clip_surgery import TEMPLATES
    from magseg_ray.geoseg.templates import CORNERS, INTENTS

    return [grounding_prompt("", c) for c in _COORDS] + [PALIGEMMA, JUDGE, *TEMPLATES, *CORNERS, *INTENTS, *INTENTS.values(),
                                                          "field pond road tree farmstead largest smallest top bottom left right"]
