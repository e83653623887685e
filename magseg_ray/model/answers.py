"""What both patch decoders share: the answer record, the end tokens, the grammar, the budget.

:func:`~magseg_ray.model.generate.answer_patches` (Hugging Face ``generate`` on whole prompts) and
:func:`~magseg_ray.model.batching.answer_chips` (prefix reuse and continuous batching) decode
answers under the same rules, kept here once so that neither decoder imports the other's
internals:

- :class:`PatchAnswer`: one patch's answer text, its decoded mask, the decoder's report and a
  confidence;
- :func:`eos_tokens`: the tokens that end an answer (the model's generation config);
- :func:`make_grammar`: the grammar that constrains answers to a prompt config's patches in its
  answer format (:func:`~magseg_ray.rle.codec_for`);
- :func:`answer_budget`: the answer token budget, the settings' or the longest mask text of a patch;
- :func:`decode_answer`: answer tokens -> :class:`PatchAnswer` (non-strict decoding, report kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magseg_ray.prompt import PromptConfig
from magseg_ray.rle import codec_for
from magseg_ray.rle.codec import DecodeReport
from magseg_ray.rle.constrained import RLELogitsProcessor


@dataclass
class PatchAnswer:
    """The model's answer for one patch."""

    box: tuple[int, int, int, int]
    """Patch box in chip pixels (x0, y0, x1, y1)."""
    text: str
    """Answer text (in the prompt config's answer format)."""
    mask: np.ndarray
    """Decoded ``p x p`` class mask."""
    report: DecodeReport
    """Repairs the decoder made (all zero under constrained decoding)."""
    confidence: float
    """exp(mean token log-probability) of the answer, in (0, 1]."""


def eos_tokens(model) -> list[int]:
    """The token ids that end an answer."""
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def make_grammar(tokenizer, config: PromptConfig, prompt_len: int, eos: list[int], budget: int) -> RLELogitsProcessor:
    """The grammar that constrains answers to ``config``'s patches in its answer format (the one
    place decoders make it)."""
    p = config.patch_size
    return codec_for(config.answer_format).logits_processor(tokenizer, p, p, config.schema, prompt_len, eos, budget)


def answer_budget(config: PromptConfig, max_new_tokens: int | None) -> int:
    """Answer tokens allowed: ``max_new_tokens``, or (None) the longest mask text of a patch in
    single-character tokens plus its end."""
    p = config.patch_size
    return max_new_tokens or codec_for(config.answer_format).longest_text(p, p) + 2


def decode_answer(tokenizer, config: PromptConfig, box, tokens, confidence: float) -> PatchAnswer:
    """The answer of the patch ``box`` from its ``tokens`` (end token included), decoded in
    non-strict mode so that a slip past the grammar shows in the report rather than failing."""
    p = config.patch_size
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    mask, report = codec_for(config.answer_format).decode(text, p, p, config.schema)
    return PatchAnswer(tuple(int(v) for v in box), text, mask, report, confidence)
