"""Patch prompts -> constrained generation -> mask text -> patch masks, and a chip's mask.

Two decoders share the grammar and the scoring (:mod:`magseg_ray.model.answers`).
:func:`answer_patches` runs Hugging Face ``generate`` on whole prompts (any mix of chips; used for
validation during training and as the benchmark baseline). :func:`answer_chip` decodes every patch of one chip with *prefix reuse*: the
chip image and the instruction (the prompt prefix shared by all its patches) go through the model
once, so only the local crop, the patch box and the answer are computed per patch, with continuous
batching (:mod:`magseg_ray.model.batching`, which also batches across chips); greedy answers are
the same as ``answer_patches``' (tested).

The model answers each patch prompt under the grammar of the prompt config's answer format
(:class:`~magseg_ray.rle.constrained.RLELogitsProcessor` or its anchored subclass, from
:func:`~magseg_ray.rle.codec_for`), so every answer decodes strictly; the decoder still runs in non-strict mode and its report is
kept, so a model or tokenizer that slips past the grammar is visible rather than fatal. Each answer
also gets a confidence: the geometric mean of its tokens' probabilities under the constrained
distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList

from magseg_ray.prompt import (
    PatchPrompt,
    PromptConfig,
    build_patch_prompt,
    check_chip,
    patch_boxes,
)
from magseg_ray.errors import ConfigError
from magseg_ray.model.answers import PatchAnswer, answer_budget, decode_answer, eos_tokens, make_grammar
from magseg_ray.model.batching import answer_chips
from magseg_ray.rle.constrained import RLELogitsProcessor


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated."""

    batch_size: int = 16
    """Patch prompts per ``generate`` call."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    max_new_tokens: int | None = None
    """Answer token budget; None allows the longest mask text of a patch in single-character tokens
    (R-RLE: ``2 p^2 + 2``).
    With a smaller budget the grammar still closes every answer as a whole mask."""
    greedy: str = "kind"
    """How a greedy decoder (temperature 0) picks each token: ``kind`` first picks the kind of the
    next piece (a number, ``*``, a newline, a class code, or the end) by its total probability, then
    the most probable token of that kind (see :meth:`.RLELogitsProcessor.by_kind`); ``token`` picks
    the single most probable token, which favours ending a row over a run length the model is sure
    of but spreads over several values."""
    boundary_bias: float = 1.0
    """Kind-first greedy decoding multiplies the probability of starting a boundary run by this
    (the model card's ``boundary_bias``; see :meth:`.RLELogitsProcessor.by_kind`)."""
    draft_tokens: int = 12
    """The mapping decoder's greedy rows feed up to this many guessed tokens per step (copied from
    the answer's own text, since R-RLE rows mostly repeat), each kept only where it is the token the
    model chooses, so answers are unchanged; 0 decodes one token per step. Sampling ignores it."""

    def __post_init__(self):
        if self.greedy not in ("kind", "token"):
            raise ConfigError(f"greedy must be 'kind' or 'token', not {self.greedy!r}")
        if not self.boundary_bias > 0:
            raise ConfigError(f"boundary_bias must be > 0, not {self.boundary_bias!r}")
        if not (isinstance(self.draft_tokens, int) and self.draft_tokens >= 0):
            raise ConfigError(f"draft_tokens must be an integer >= 0, not {self.draft_tokens!r}")


def _inputs(processor, prompts: list[PatchPrompt], device) -> dict:
    enc = processor(text=[p.text for p in prompts], images=[p.images for p in prompts],
                    return_tensors="pt", add_special_tokens=False, padding=True)
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def answer_patches(model, processor, prompts: list[PatchPrompt], config: PromptConfig = PromptConfig(),
                   settings: GenerationSettings = GenerationSettings()) -> list[PatchAnswer]:
    """Generate, decode and score the answers for ``prompts`` (all with ``config``'s patch size)."""
    budget = answer_budget(config, settings.max_new_tokens)
    eos = eos_tokens(model)
    eos_ids = torch.tensor(eos)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    answers: list[PatchAnswer] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        inputs = _inputs(processor, batch, device)
        prompt_len = inputs["input_ids"].shape[1]
        grammar = make_grammar(tokenizer, config, prompt_len, eos, budget)
        processors = [grammar]
        if settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": settings.temperature}
        else:
            sampling = {"do_sample": False}
            if settings.greedy == "kind":
                processors.append(lambda ids, scores, grammar=grammar: grammar.by_kind(scores, settings.boundary_bias))
        out = model.generate(**inputs, **sampling, max_new_tokens=budget, logits_processor=LogitsProcessorList(processors),
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        logprobs = _constrained_logprobs(grammar, out.sequences, out.logits, prompt_len, settings.temperature)
        new = out.sequences[:, prompt_len:]
        for prompt, tokens, lp in zip(batch, new, logprobs):
            ended = torch.isin(tokens, eos_ids.to(tokens.device))
            n = int(ended.int().argmax()) + 1 if ended.any() else len(tokens)  # answer incl. its end token
            confidence = float(torch.exp(lp[:n].float().mean()))
            answers.append(decode_answer(tokenizer, config, prompt.box, tokens[:n], confidence))
    return answers


def _constrained_logprobs(grammar: RLELogitsProcessor, sequences: torch.Tensor, logits: tuple, prompt_len: int,
                          temperature: float) -> torch.Tensor:
    """``b x steps`` log-probabilities of the generated tokens under the grammar-constrained
    distribution (at ``temperature`` when sampling), from ``generate``'s raw logits; the same
    numbers :func:`answer_chip` accumulates, whatever rule picked the tokens."""
    out = []
    for t, step in enumerate(logits):
        scores = grammar(sequences[:, : prompt_len + t], step.float())
        if temperature > 0:
            scores = scores / temperature
        out.append(torch.log_softmax(scores, -1).gather(1, sequences[:, prompt_len + t, None])[:, 0])
    return torch.stack(out, 1)


def answer_chip(model, processor, chip: np.ndarray, boxes: list, config: PromptConfig = PromptConfig(),
                settings: GenerationSettings = GenerationSettings(), generator: torch.Generator | None = None
                ) -> list[PatchAnswer]:
    """Answers for the patches ``boxes`` of one chip, encoding the chip and instruction once (see
    :mod:`magseg_ray.model.batching`, which also batches across chips). ``generator`` seeds sampling
    when ``settings.temperature > 0``."""
    return answer_chips(model, processor, [(chip, list(boxes))], config, settings, generator)[0]


def segment_chip(model, processor, chip: np.ndarray, config: PromptConfig = PromptConfig(),
                 settings: GenerationSettings = GenerationSettings()) -> tuple[np.ndarray, np.ndarray, list[PatchAnswer]]:
    """Class mask of a whole chip (``H x W`` uint8), per-patch confidence grid, and the answers."""
    chip = check_chip(chip)
    h, w = chip.shape[:2]
    boxes = patch_boxes(h, w, config.patch_size)
    answers = answer_patches(model, processor, [build_patch_prompt(chip, b, config) for b in boxes], config, settings)
    mask = np.zeros((h, w), np.uint8)
    p = config.patch_size
    confidence = np.zeros((h // p, w // p), np.float32)
    for a in answers:
        x0, y0, x1, y1 = a.box
        mask[y0:y1, x0:x1] = a.mask
        confidence[y0 // p, x0 // p] = a.confidence
    return mask, confidence, answers
