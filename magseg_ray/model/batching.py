"""Continuous batching of patch answers across chips, each chip's prompt prefix encoded once.

:func:`answer_chips` is the mapping decoder. Per chip, the chip image and the instruction (the
prompt prefix every patch of the chip shares) go through the model once; the patch *suffixes* (the
local crop and the patch box) are tokenized alone, in one processor call per chip, so the chip
image is resized once per chip rather than once per patch. Whether the tokenizer splits a prompt
at the prefix is checked once per chip, on the chip's first whole prompt.

Patches of every chip then wait in one queue. The model decodes a batch of rows, each row one
patch answer laid out as ``[padding][prefix][padding][suffix][answer]`` with explicit position ids;
a row that ends (its end token, or the answer budget) leaves the batch at once (its KV cache rows
are dropped), and when at most half the batch is left, the next patches of the queue, of any chip,
are prefilled from their chips' prefix caches and join it. Most patches are one class (``*f``,
``*b``): they end after three tokens and make room, and the few long answers decode in a full
batch instead of a batch of finished rows. Merging aligns the rows by padding on the left, so the
cache grows by the oldest row's age at most, and columns that are padding in every row are cut.

Greedy answers are the same as :func:`~magseg_ray.model.generate.answer_patches`' (tested): each
row is constrained by the grammar with its own answer and its own budget, exactly as ``generate``
constrains a row. Padding on the left of a row leaves its tokens' distances alone, so sliding-window
layers (which count cache slots; they keep their last ``window - 1`` slots, merged rows included)
see what they would see alone; only the padding between a short suffix and its prefix counts
against a window, for answers that reach its length.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from magseg_ray.errors import ChipError
from magseg_ray.model.generate import PatchAnswer, _eos, make_grammar
from magseg_ray.prompt import PromptConfig, build_patch_prompt, check_chip
from magseg_ray.rle import codec_for


@dataclass
class _Rows:
    """The rows being decoded: one per patch answer, the KV cache in the same row order."""

    items: list[tuple[int, int]]
    """(chip, patch) of each row."""
    cache: object
    """The model's KV cache for these rows."""
    attention: torch.Tensor
    """``rows x cache length`` attention mask (0 on padding)."""
    position: torch.Tensor
    """``rows x 1`` position id of each row's last token."""
    logits: torch.Tensor
    """``rows x vocab`` next-token logits."""


def _cache_layers(cache) -> list:
    return list(cache.layers)


def _resize(layer, total: int) -> None:
    """Pad (zeros) or cut a cache layer on the left so that it spans ``total`` slots. A sliding-window
    layer stores only its last ``window - 1`` slots once that long, and keeps doing so."""
    stored = total
    if getattr(layer, "is_sliding", False):
        stored = min(total, layer.sliding_window - 1)
        layer.cumulative_length = total
    have = layer.keys.shape[2]
    if stored > have:
        pad = layer.keys.new_zeros(*layer.keys.shape[:2], stored - have, layer.keys.shape[3])
        layer.keys, layer.values = torch.cat([pad, layer.keys], 2), torch.cat([pad, layer.values], 2)
    elif stored < have:
        layer.keys, layer.values = layer.keys[:, :, have - stored:], layer.values[:, :, have - stored:]


def _pad_left(cache, attention: torch.Tensor, length: int) -> torch.Tensor:
    """Pad ``cache`` (in place) and ``attention`` on the left to ``length`` slots."""
    extra = length - attention.shape[1]
    if extra <= 0:
        return attention
    for layer in _cache_layers(cache):
        _resize(layer, length)
    return torch.cat([attention.new_zeros(attention.shape[0], extra), attention], 1)


def _cut_left(cache, attention: torch.Tensor) -> torch.Tensor:
    """Drop the leading cache slots that are padding in every row."""
    used = attention.any(0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0:
        return attention
    for layer in _cache_layers(cache):
        _resize(layer, attention.shape[1] - first)
    return attention[:, first:]


def _merge(a: _Rows, b: _Rows) -> _Rows:
    """Rows of ``a`` then rows of ``b`` in one batch (their caches aligned on the right)."""
    length = max(a.attention.shape[1], b.attention.shape[1])
    attention_a, attention_b = _pad_left(a.cache, a.attention, length), _pad_left(b.cache, b.attention, length)
    for la, lb in zip(_cache_layers(a.cache), _cache_layers(b.cache)):
        la.keys, la.values = torch.cat([la.keys, lb.keys]), torch.cat([la.values, lb.values])
    return _Rows(a.items + b.items, a.cache, torch.cat([attention_a, attention_b]), torch.cat([a.position, b.position]),
                 torch.cat([a.logits, b.logits]))


def _select(rows: _Rows, keep: torch.Tensor) -> _Rows:
    """Only the rows where ``keep`` is true."""
    index = keep.nonzero()[:, 0]
    rows.cache.batch_select_indices(index)
    items = [rows.items[i] for i in index.tolist()]
    out = _Rows(items, rows.cache, rows.attention[index], rows.position[index], rows.logits[index])
    out.attention = _cut_left(out.cache, out.attention)
    return out


@dataclass
class _Chip:
    """One chip's shared prefix (encoded) and its patch suffixes (tokenized)."""

    boxes: list
    prefix_cache: object
    prefix_types: torch.Tensor
    suffix_ids: list[torch.Tensor]
    suffix_types: list[torch.Tensor]
    pixels: list[torch.Tensor | None]
    """Each patch's local crop pixels (None without a crop)."""


def _encode_chip(model, processor, chip: np.ndarray, boxes: list, config: PromptConfig, device) -> _Chip:
    """The chip's prefix through the model once; every patch suffix tokenized alone."""
    chip = check_chip(chip)
    prompts = [build_patch_prompt(chip, tuple(int(v) for v in b), config) for b in boxes]
    pre = processor(text=[prompts[0].prefix], images=[[chip]], return_tensors="pt", add_special_tokens=False)
    pre = {k: v.to(device) for k, v in pre.items()}
    prefix_types = pre.get("token_type_ids", pre["input_ids"] * 0)
    cache = model(**pre, use_cache=True, logits_to_keep=1).past_key_values
    texts = [q.text[len(q.prefix):] for q in prompts]
    crops = [q.images[1:] for q in prompts]
    enc = processor(text=texts, images=crops if crops[0] else None, return_tensors="pt",
                    add_special_tokens=False, padding=True)
    real = enc["attention_mask"].bool()
    types = enc.get("token_type_ids", enc["input_ids"] * 0)
    ids = [enc["input_ids"][i][real[i]] for i in range(len(prompts))]
    _check_split(processor, prompts[0], pre["input_ids"][0].cpu(), ids[0])
    per = len(crops[0])
    pixels = [enc["pixel_values"][i * per:(i + 1) * per] if per else None for i in range(len(prompts))]
    return _Chip(list(boxes), cache, prefix_types, ids, [types[i][real[i]] for i in range(len(prompts))], pixels)


def _check_split(processor, prompt, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor) -> None:
    """Raise unless the whole prompt tokenizes as the prefix's tokens then the suffix's."""
    whole = processor(text=[prompt.text], images=[prompt.images], return_tensors="pt",
                      add_special_tokens=False)["input_ids"][0]
    if not torch.equal(whole, torch.cat([prefix_ids, suffix_ids])):
        raise ChipError("the tokenizer does not split patch prompts at the shared prefix; use answer_patches")


def _prefill(model, chips: list[_Chip], items: list[tuple[int, int]], pad_id: int, device) -> _Rows:
    """Rows for ``items``: their chips' prefix caches, then their suffixes through the model."""
    b = len(items)
    width = max(len(chips[c].suffix_ids[j]) for c, j in items)
    prefix_len = max(chips[c].prefix_types.shape[1] for c, _ in items)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    prefix_mask, prefix_types = torch.zeros(b, prefix_len, dtype=torch.long), torch.zeros(b, prefix_len, dtype=torch.long)
    for row, (c, j) in enumerate(items):  # left-pad each prefix and each suffix
        n, m = len(chips[c].suffix_ids[j]), chips[c].prefix_types.shape[1]
        ids[row, width - n:], types[row, width - n:], mask[row, width - n:] = chips[c].suffix_ids[j], chips[c].suffix_types[j], 1
        prefix_mask[row, prefix_len - m:], prefix_types[row, prefix_len - m:] = 1, chips[c].prefix_types[0].cpu()
    cache = _stack_prefixes([chips[c].prefix_cache for c, _ in items], prefix_len)
    attention = torch.cat([prefix_mask, mask], 1).to(device)
    positions = (attention.cumsum(1) - 1).clamp(min=0)[:, prefix_len:]
    pixels = [chips[c].pixels[j] for c, j in items if chips[c].pixels[j] is not None]
    out = model(input_ids=ids.to(device), attention_mask=attention, position_ids=positions, past_key_values=cache,
                pixel_values=torch.cat(pixels).to(device) if pixels else None,
                token_type_ids=torch.cat([prefix_types, types], 1).to(device), use_cache=True, logits_to_keep=1)
    return _Rows(list(items), out.past_key_values, attention, positions[:, -1:], out.logits[:, -1, :].float())


def _stack_prefixes(caches: list, length: int):
    """One batch cache from single-row prefix caches (left-padded to ``length``); shares no tensors."""
    import copy

    out = copy.copy(caches[0])
    out.layers = [copy.copy(layer) for layer in _cache_layers(caches[0])]
    for k, layer in enumerate(out.layers):
        keys, values = [], []
        for cache in caches:
            src = _cache_layers(cache)[k]
            pad = length - src.keys.shape[2]
            keys.append(torch.nn.functional.pad(src.keys, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(src.values, (0, 0, pad, 0)))
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = length
    return out


def _constrain(grammar, rows: _Rows, answers: dict, budget: int) -> torch.Tensor:
    """Grammar-constrained scores of every row: its own answer so far, its own budget left."""
    out = torch.full_like(rows.logits, float("-inf"))
    picks, which = [], []
    for row, item in enumerate(rows.items):
        answer = answers[item]
        allowed = grammar.allowed(grammar.state_of(item, answer), budget - len(answer))
        picks.append(allowed)
        which.append(torch.full((len(allowed),), row, dtype=torch.long))
    index = (torch.cat(which).to(rows.logits.device), torch.cat(picks).to(rows.logits.device))
    out[index] = rows.logits[index]
    return out


@torch.no_grad()
def answer_chips(model, processor, chips: list[tuple[np.ndarray, list]], config: PromptConfig, settings,
                 generator: torch.Generator | None = None) -> list[list]:
    """Answers (:class:`~magseg_ray.model.generate.PatchAnswer`) for the patch boxes of each
    ``(chip, boxes)`` pair, in their order (see module doc). ``settings`` is a
    :class:`~magseg_ray.model.generate.GenerationSettings`; ``generator`` seeds sampling."""
    p = config.patch_size
    budget = settings.max_new_tokens or codec_for(config.answer_format).longest_text(p, p) + 2
    eos = _eos(model)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    encoded = [_encode_chip(model, processor, chip, boxes, config, device) if len(boxes) else None for chip, boxes in chips]
    grammar = make_grammar(tokenizer, config, 0, eos, budget)
    eos_ids = torch.tensor(eos, device=device)
    queue = deque((c, j) for c, e in enumerate(encoded) if e is not None for j in range(len(e.boxes)))
    answers: dict[tuple[int, int], list[int]] = {item: [] for item in queue}
    logprob: dict[tuple[int, int], float] = {item: 0.0 for item in queue}
    rows = None
    while queue or rows is not None:
        if queue and (rows is None or 2 * len(rows.items) <= settings.batch_size):
            take = [queue.popleft() for _ in range(min(settings.batch_size - (len(rows.items) if rows else 0), len(queue)))]
            new = _prefill(model, encoded, take, tokenizer.pad_token_id, device)
            rows = new if rows is None else _merge(rows, new)
        scores = _constrain(grammar, rows, answers, budget)
        if settings.temperature > 0:
            scores = scores / settings.temperature
            token = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)[:, 0]
        else:
            token = (grammar.by_kind(scores, settings.boundary_bias) if settings.greedy == "kind" else scores).argmax(-1)
        chosen = torch.log_softmax(scores, -1).gather(1, token[:, None])[:, 0].tolist()
        ended = torch.isin(token, eos_ids).tolist()
        tokens = token.tolist()
        for row, item in enumerate(rows.items):
            answers[item].append(tokens[row])
            logprob[item] += chosen[row]
            ended[row] = ended[row] or len(answers[item]) >= budget
        keep = torch.tensor([not e for e in ended], device=device)
        if not bool(keep.any()):
            rows = None
            continue
        if not bool(keep.all()):
            rows = _select(rows, keep)
            token = token[keep]
        rows.attention = torch.cat([rows.attention, rows.attention.new_ones(len(rows.items), 1)], 1)
        rows.position = rows.position + 1
        out = model(input_ids=token[:, None], attention_mask=rows.attention, position_ids=rows.position,
                    past_key_values=rows.cache, use_cache=True)
        rows.logits = out.logits[:, -1, :].float()
    results = []
    for c, e in enumerate(encoded):
        results.append([] if e is None else [_answer(tokenizer, config, e.boxes[j], answers[(c, j)],
                                                     logprob[(c, j)]) for j in range(len(e.boxes))])
    return results


def _answer(tokenizer, config: PromptConfig, box, tokens: list[int], logprob: float) -> PatchAnswer:
    p = config.patch_size
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    mask, report = codec_for(config.answer_format).decode(text, p, p, config.schema)
    return PatchAnswer(tuple(int(v) for v in box), text, mask, report, float(np.exp(logprob / max(len(tokens), 1))))
