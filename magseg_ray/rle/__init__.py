"""Mask text formats: a patch's class mask as the text a model writes, and back.

Two formats, chosen per model (``answer_format`` of :class:`~magseg_ray.prompt.PromptConfig` and of
the model card ``magseg.json``):

- ``rrle`` (:mod:`magseg_ray.rle.codec`, grammar :mod:`magseg_ray.rle.constrained`): R-RLE, runs as
  class code + length, ``N*`` repeats a line; the shipped demo model's format.
- ``anchored`` (:mod:`magseg_ray.rle.anchored`, grammar :mod:`magseg_ray.rle.anchored_grammar`):
  each line opens with its first row, runs as class code + end column.

:func:`codec_for` is the one place that maps a format name to its codec and grammar; everything
that encodes targets, decodes answers or constrains generation goes through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

import numpy as np

from magseg_ray.errors import ConfigError
from magseg_ray.rle import anchored, codec
from magseg_ray.rle.codec import DecodeReport

ANSWER_FORMATS = ("rrle", "anchored")
"""Names of the mask text formats."""


@dataclass(frozen=True)
class AnswerFormat:
    """A mask text format: its codec functions and its constrained-decoding processor."""

    name: str
    """The format's name (one of :data:`ANSWER_FORMATS`)."""
    encode: Callable[..., str]
    """``encode(mask, schema) -> text``: the canonical text of a mask."""
    decode: Callable[..., tuple[np.ndarray, DecodeReport]]
    """``decode(text, h, w, schema, strict=False) -> (mask, report)``: any text back to a mask."""
    longest_text: Callable[[int, int], int]
    """``longest_text(h, w)``: characters of the longest text of an ``h x w`` mask (at most)."""
    processor_path: str
    """``module:Class`` of its ``LogitsProcessor`` (imported on use: it needs torch)."""

    def logits_processor(self, tokenizer, h: int, w: int, schema, prompt_len: int, eos_token_ids: list[int],
                         max_new_tokens: int | None = None):
        """The format's :class:`~magseg_ray.rle.constrained.RLELogitsProcessor` (same arguments)."""
        module, name = self.processor_path.split(":")
        return getattr(import_module(module), name)(tokenizer, h, w, schema, prompt_len, eos_token_ids,
                                                    max_new_tokens)


_FORMATS = {
    "rrle": AnswerFormat("rrle", codec.encode, codec.decode, codec.longest_text,
                         "magseg_ray.rle.constrained:RLELogitsProcessor"),
    "anchored": AnswerFormat("anchored", anchored.encode, anchored.decode, anchored.longest_text,
                             "magseg_ray.rle.anchored_grammar:AnchoredLogitsProcessor"),
}


def codec_for(answer_format: str) -> AnswerFormat:
    """The mask text format named ``answer_format``; :class:`ConfigError` for an unknown name."""
    try:
        return _FORMATS[answer_format]
    except KeyError:
        raise ConfigError(f"unknown answer format {answer_format!r}; known: {', '.join(ANSWER_FORMATS)}") from None
