"""Patch prompts -> constrained generation -> mask text -> patch masks, and a chip's mask.

Two decoders share the grammar and the scoring. :func:`answer_patches` runs Hugging Face
``generate`` on whole prompts (any mix of chips; used for validation during training and as the
benchmark baseline). :func:`answer_chip` decodes every patch of one chip with *prefix reuse*: the
chip image and the instruction (the prompt prefix shared by all its patches) go through the model
once, and each batch of patches starts from a copy of that KV cache, so only the local crop, the
patch box and the answer are computed per patch. Rows of a batch are laid out as
``[prefix][padding][suffix][answer]`` with explicit position ids, so suffixes of different token
lengths (real Gemma3 tokenizers split numbers into digits) batch together; greedy answers are the
same as ``answer_patches``' (tested).

The model answers each patch prompt under the grammar of the prompt config's answer format
(:class:`~magseg_ray.rle.constrained.RLELogitsProcessor` or its anchored subclass, from
:func:`~magseg_ray.rle.codec_for`), so every answer decodes strictly; the decoder still runs in non-strict mode and its report is
kept, so a model or tokenizer that slips past the grammar is visible rather than fatal. Each answer
also gets a confidence: the geometric mean of its tokens' probabilities under the constrained
distribution.
"""

from __future__ import annotations

import copy
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
from magseg_ray.errors import ChipError, ConfigError
from magseg_ray.rle import codec_for
from magseg_ray.rle.codec import DecodeReport
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

    def __post_init__(self):
        if self.greedy not in ("kind", "token"):
            raise ConfigError(f"greedy must be 'kind' or 'token', not {self.greedy!r}")


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


def _inputs(processor, prompts: list[PatchPrompt], device) -> dict:
    enc = processor(text=[p.text for p in prompts], images=[p.images for p in prompts],
                    return_tensors="pt", add_special_tokens=False, padding=True)
    return {k: v.to(device) for k, v in enc.items()}


@torch.no_grad()
def answer_patches(model, processor, prompts: list[PatchPrompt], config: PromptConfig = PromptConfig(),
                   settings: GenerationSettings = GenerationSettings()) -> list[PatchAnswer]:
    """Generate, decode and score the answers for ``prompts`` (all with ``config``'s patch size)."""
    p = config.patch_size
    fmt = codec_for(config.answer_format)
    budget = settings.max_new_tokens or fmt.longest_text(p, p) + 2
    eos = _eos(model)
    eos_ids = torch.tensor(eos)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    answers: list[PatchAnswer] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        inputs = _inputs(processor, batch, device)
        prompt_len = inputs["input_ids"].shape[1]
        grammar = fmt.logits_processor(tokenizer, p, p, config.schema, prompt_len, eos, budget)
        processors = [grammar]
        if settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": settings.temperature}
        else:
            sampling = {"do_sample": False}
            if settings.greedy == "kind":
                processors.append(lambda ids, scores, grammar=grammar: grammar.by_kind(scores))
        out = model.generate(**inputs, **sampling, max_new_tokens=budget, logits_processor=LogitsProcessorList(processors),
                             output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        logprobs = _constrained_logprobs(grammar, out.sequences, out.logits, prompt_len, settings.temperature)
        new = out.sequences[:, prompt_len:]
        for prompt, tokens, lp in zip(batch, new, logprobs):
            ended = torch.isin(tokens, eos_ids.to(tokens.device))
            n = int(ended.int().argmax()) + 1 if ended.any() else len(tokens)  # answer incl. its end token
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
            mask, report = fmt.decode(text, p, p, config.schema)
            confidence = float(torch.exp(lp[:n].float().mean()))
            answers.append(PatchAnswer(prompt.box, text, mask, report, confidence))
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


def _eos(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def _suffix(processor, prompt: PatchPrompt, prefix_ids: torch.Tensor) -> dict:
    """One prompt tokenized whole; returns its tokens after the prefix and the crop's pixels."""
    enc = processor(text=[prompt.text], images=[prompt.images], return_tensors="pt", add_special_tokens=False)
    n = prefix_ids.shape[0]
    if not torch.equal(enc["input_ids"][0, :n], prefix_ids):
        raise ChipError("the tokenizer does not split patch prompts at the shared prefix; use answer_patches")
    out = {"ids": enc["input_ids"][0, n:], "types": enc.get("token_type_ids", enc["input_ids"] * 0)[0, n:]}
    out["pixels"] = enc["pixel_values"][1:] if len(prompt.images) > 1 else None
    return out


@torch.no_grad()
def answer_chip(model, processor, chip: np.ndarray, boxes: list, config: PromptConfig = PromptConfig(),
                settings: GenerationSettings = GenerationSettings(), generator: torch.Generator | None = None
                ) -> list[PatchAnswer]:
    """Answers for the patches ``boxes`` of one chip, encoding the chip and instruction once (see
    module doc). ``generator`` seeds sampling when ``settings.temperature > 0``."""
    chip = check_chip(chip)
    prompts = [build_patch_prompt(chip, tuple(int(v) for v in b), config) for b in boxes]
    if not prompts:
        return []
    p = config.patch_size
    fmt = codec_for(config.answer_format)
    budget = settings.max_new_tokens or fmt.longest_text(p, p) + 2
    eos = _eos(model)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    pre = processor(text=[prompts[0].prefix], images=[[chip]], return_tensors="pt", add_special_tokens=False)
    pre = {k: v.to(device) for k, v in pre.items()}
    prefix_len = pre["input_ids"].shape[1]
    prefix_types = pre.get("token_type_ids", pre["input_ids"] * 0)
    prefix_cache = model(**pre, use_cache=True).past_key_values
    eos_ids = torch.tensor(eos, device=device)
    answers: list[PatchAnswer] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        parts = [_suffix(processor, q, pre["input_ids"][0].cpu()) for q in batch]
        b, width = len(batch), max(len(x["ids"]) for x in parts)
        ids = torch.full((b, width), tokenizer.pad_token_id, dtype=torch.long)
        types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
        for row, x in enumerate(parts):  # left-pad each suffix against the prefix
            n = len(x["ids"])
            ids[row, width - n :], types[row, width - n :], mask[row, width - n :] = x["ids"], x["types"], 1
        ids, types, mask = ids.to(device), types.to(device), mask.to(device)
        attention = torch.cat([torch.ones(b, prefix_len, dtype=torch.long, device=device), mask], 1)
        positions = (prefix_len + mask.cumsum(1) - 1).clamp(min=prefix_len)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(b)
        pixels = [x["pixels"] for x in parts if x["pixels"] is not None]
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                    pixel_values=torch.cat(pixels).to(device) if pixels else None,
                    token_type_ids=torch.cat([prefix_types.expand(b, -1), types], 1), use_cache=True)
        grammar = fmt.logits_processor(tokenizer, p, p, config.schema, width, eos, budget)
        seq, done = ids, torch.zeros(b, dtype=torch.bool, device=device)
        logprob, count = torch.zeros(b, device=device), torch.zeros(b, device=device)
        position = positions[:, -1:]
        for _ in range(budget):
            scores = grammar(seq, out.logits[:, -1, :].float())
            if settings.temperature > 0:
                scores = scores / settings.temperature
                token = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[:, 0]
            else:
                token = (grammar.by_kind(scores) if settings.greedy == "kind" else scores).argmax(-1)
            token = torch.where(done, tokenizer.pad_token_id, token)
            chosen = torch.log_softmax(scores, -1).gather(1, token[:, None])[:, 0]
            logprob += torch.where(done, 0.0, chosen)
            count += (~done).float()
            done |= torch.isin(token, eos_ids)
            seq = torch.cat([seq, token[:, None]], 1)
            if bool(done.all()):
                break
            attention = torch.cat([attention, torch.ones(b, 1, dtype=torch.long, device=device)], 1)
            position = position + 1
            out = model(input_ids=token[:, None], attention_mask=attention, position_ids=position,
                        past_key_values=cache, use_cache=True)
        for row, prompt in enumerate(batch):
            tokens = seq[row, width:]
            ended = torch.isin(tokens, eos_ids)
            n = int(ended.int().argmax()) + 1 if ended.any() else len(tokens)
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True)
            mask_, report = fmt.decode(text, p, p, config.schema)
            confidence = float(torch.exp(logprob[row] / count[row].clamp(min=1)))
            answers.append(PatchAnswer(prompt.box, text, mask_, report, confidence))
    return answers


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
