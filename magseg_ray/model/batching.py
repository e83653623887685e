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

Greedy rows also feed *drafts* (``settings.draft_tokens``): tokens guessed from the row's own
answer, what followed the latest earlier occurrence of its last three tokens (prompt lookup). An
R-RLE row mostly repeats the row above, so a long answer is mostly guessed right. One forward pass
scores a row's next token and every draft token after it; the row keeps its drafts while each is
the token the model chooses there, and gains the first choice that differs, so the answer is the
one a token-by-token decoder writes. The slots of rejected drafts stay in the cache, masked, until
the holes take more than half the cache or a sliding window needs the room; then every row's tokens
move to the right end (:func:`_compact`). A step feeds as many drafts as the median row has (the
batch is padded to its longest draft, and padding is work too). On the demo model this takes
fewer than half the forward passes; on a CPU, where each fed token costs compute, the gain is
smaller than on a GPU, where a pass costs about the same for one token or a dozen.

Greedy answers are the same as :func:`~magseg_ray.model.generate.answer_patches`' (tested): each
row is constrained by the grammar with its own answer and its own budget, exactly as ``generate``
constrains a row. Padding on the left of a row leaves its tokens' distances alone, so sliding-window
layers (which count cache slots; they keep their last ``window - 1`` slots, merged rows included)
see what they would see alone; only the padding between a short suffix and its prefix (and holes
not yet compacted) counts against a window, for answers that reach its length. Drafts are fed only
while every slot fits in the window, so compacting never meets a slot a window has dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from magseg_ray.errors import ChipError
from magseg_ray.model.answers import PatchAnswer, answer_budget, decode_answer, eos_tokens, make_grammar
from magseg_ray.prompt import PromptConfig, build_patch_prompt, check_chip


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
    """``rows x 1`` position id of each row's last token in the cache."""
    next: torch.Tensor | None = None
    """``rows`` tokens chosen but not yet in the cache (each row's last answer token)."""


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
                 torch.cat([a.next, b.next]))


def _select(rows: _Rows, keep: torch.Tensor) -> _Rows:
    """Only the rows where ``keep`` is true."""
    index = keep.nonzero()[:, 0]
    rows.cache.batch_select_indices(index)
    items = [rows.items[i] for i in index.tolist()]
    out = _Rows(items, rows.cache, rows.attention[index], rows.position[index], rows.next[index])
    out.attention = _cut_left(out.cache, out.attention)
    return out


def _compact(rows: _Rows) -> None:
    """Move each row's tokens to the right end of the cache, in order (the slots of rejected drafts
    and padding to the left), then cut the columns that are empty in every row."""
    order = torch.sort(rows.attention, dim=1, stable=True).indices
    for layer in _cache_layers(rows.cache):
        at = order[:, None, :, None].expand_as(layer.keys)
        layer.keys, layer.values = layer.keys.gather(2, at), layer.values.gather(2, at)
    rows.attention = _cut_left(rows.cache, rows.attention.gather(1, order))


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
    return _Rows(list(items), out.past_key_values, attention, positions[:, -1:]), out.logits.float()


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


def _feed(model, rows: _Rows, drafts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Each row's next token, then its drafts (padded to the longest), through the model:
    ``rows x (1 + drafts) x vocab`` logits, the choice after each fed token."""
    width = 1 + max(len(d) for d in drafts)
    ids = torch.full((len(drafts), width), pad_id, dtype=torch.long)
    for row, draft in enumerate(drafts):
        ids[row, 1:1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
    ids = ids.to(rows.next.device)
    ids[:, 0] = rows.next
    rows.attention = torch.cat([rows.attention, rows.attention.new_ones(len(drafts), width)], 1)
    positions = rows.position + torch.arange(1, width + 1, device=rows.position.device)
    rows.position = positions[:, -1:]
    out = model(input_ids=ids, attention_mask=rows.attention, position_ids=positions, past_key_values=rows.cache,
                use_cache=True)
    return out.logits.float()


def _make_room(rows: _Rows, most: int) -> int:
    """How many draft tokens each row may feed now: ``most``, or fewer where a sliding-window layer
    would drop slots (with every slot at hand, rejected drafts are just masked). Compacts the cache
    (:func:`_compact`) first when the holes free more than half of it, or more than ``most`` slots
    a window needs; never once a window has dropped slots."""
    windows = [layer.sliding_window for layer in _cache_layers(rows.cache) if getattr(layer, "is_sliding", False)]
    window = min(windows, default=None)
    length = rows.attention.shape[1]
    if window is None or length <= window - 1:
        free = int((rows.attention == 0).sum(1).min())
        if free > length // 2 or (window is not None and length + most > window - 2 and free > most):
            _compact(rows)
    return most if window is None else max(0, min(most, window - 2 - rows.attention.shape[1]))


class _Answers:
    """Every patch's answer so far, each token chosen under the grammar with the answer's own state
    and budget, and *drafts*: guesses of an answer's next tokens from its own text (prompt lookup),
    which the model checks all at once."""

    def __init__(self, grammar, items, budget: int, settings, generator, eos: list[int], lookup: int = 3):
        self.grammar, self.budget, self.settings, self.generator = grammar, budget, settings, generator
        self.eos, self.lookup = set(eos), lookup
        self.tokens: dict = {item: [] for item in items}
        self.logprob: dict = {item: 0.0 for item in items}
        self._seen: dict = {item: ({}, 0) for item in items}  # n-gram -> where its latest continuation starts

    def choose(self, items: list, logits: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Each row's next token and its log-probability under the grammar-constrained distribution."""
        scores = torch.full_like(logits, float("-inf"))
        picks, which = [], []
        for row, item in enumerate(items):
            answer = self.tokens[item]
            allowed = self.grammar.allowed(self.grammar.state_of(item, answer), self.budget - len(answer))
            picks.append(allowed)
            which.append(torch.full((len(allowed),), row, dtype=torch.long))
        index = (torch.cat(which).to(logits.device), torch.cat(picks).to(logits.device))
        scores[index] = logits[index]
        settings = self.settings
        if settings.temperature > 0:
            scores = scores / settings.temperature
            token = torch.multinomial(torch.softmax(scores, -1), 1, generator=self.generator)[:, 0]
        else:
            token = (self.grammar.by_kind(scores, settings.boundary_bias) if settings.greedy == "kind" else scores).argmax(-1)
        return token, torch.log_softmax(scores, -1).gather(1, token[:, None])[:, 0].tolist()

    def draft(self, item, most: int) -> list[int]:
        """Up to ``most`` tokens that followed the latest earlier occurrence of the answer's last
        ``lookup`` tokens (or fewer): an R-RLE row mostly repeats the row above it."""
        answer = self.tokens[item]
        seen, done = self._seen[item]
        for end in range(done + 1, len(answer)):  # n-grams ending before the last token, latest wins
            for size in range(1, min(self.lookup, end) + 1):
                seen[tuple(answer[end - size:end])] = end
        self._seen[item] = (seen, max(done, len(answer) - 1))
        for size in range(min(self.lookup, len(answer)), 0, -1):
            start = seen.get(tuple(answer[-size:]))
            if start is not None:
                return answer[start:start + most]
        return []

    def answer(self, item, box, tokenizer, config: PromptConfig) -> PatchAnswer:
        """``item``'s answer decoded, its confidence from its mean token log-probability."""
        tokens = self.tokens[item]
        return decode_answer(tokenizer, config, box, tokens, float(np.exp(self.logprob[item] / max(len(tokens), 1))))

    def advance(self, rows: _Rows, logits: torch.Tensor, drafts: list[list[int]]) -> _Rows | None:
        """Choose each row's tokens from ``logits`` (:func:`_feed`'s), keeping its drafts while they
        equal the choice: a row gains its accepted drafts and one token more. Rows that end leave;
        the others drop their rejected drafts' slots. None when no row is left."""
        n, width = len(rows.items), logits.shape[1]
        accepted, ended, active = [0] * n, [False] * n, list(range(n))
        for i in range(width):
            token, chosen = self.choose([rows.items[r] for r in active], logits[active, i])
            going = []
            for r, t, lp in zip(active, token.tolist(), chosen):
                answer = self.tokens[rows.items[r]]
                answer.append(t)
                self.logprob[rows.items[r]] += lp
                if t in self.eos or len(answer) >= self.budget:
                    ended[r] = True
                elif i < len(drafts[r]) and drafts[r][i] == t:
                    accepted[r] += 1
                    going.append(r)
            if not going:
                break
            active = going
        device = rows.position.device
        rows.next = torch.tensor([self.tokens[item][-1] for item in rows.items], device=device)
        if all(ended):
            return None
        if any(ended):
            rows = _select(rows, torch.tensor([not e for e in ended], device=device))
        shift = torch.tensor([width - 1 - a for a, e in zip(accepted, ended) if not e], device=device)
        rows.position = rows.position - shift[:, None]
        if bool(shift.any()):  # rejected drafts: their slots stay in the cache, masked
            length = rows.attention.shape[1]
            rows.attention = rows.attention * (torch.arange(length, device=device) < length - shift[:, None])
        return rows


@torch.no_grad()
def answer_chips(model, processor, chips: list[tuple[np.ndarray, list]], config: PromptConfig, settings,
                 generator: torch.Generator | None = None) -> list[list]:
    """Answers (:class:`~magseg_ray.model.answers.PatchAnswer`) for the patch boxes of each
    ``(chip, boxes)`` pair, in their order (see module doc). ``settings`` is a
    :class:`~magseg_ray.model.generate.GenerationSettings`; ``generator`` seeds sampling."""
    budget = answer_budget(config, settings.max_new_tokens)
    eos = eos_tokens(model)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    encoded = [_encode_chip(model, processor, chip, boxes, config, device) if len(boxes) else None for chip, boxes in chips]
    queue = deque((c, j) for c, e in enumerate(encoded) if e is not None for j in range(len(e.boxes)))
    answers = _Answers(make_grammar(tokenizer, config, 0, eos, budget), list(queue), budget, settings, generator, eos)
    most = settings.draft_tokens if settings.temperature == 0 else 0  # drafts are checked greedily
    rows = None
    while queue or rows is not None:
        if queue and (rows is None or 2 * len(rows.items) <= settings.batch_size):
            take = [queue.popleft() for _ in range(min(settings.batch_size - (len(rows.items) if rows else 0), len(queue)))]
            new, logits = _prefill(model, encoded, take, tokenizer.pad_token_id, device)
            new = answers.advance(new, logits, [[] for _ in take])
            rows = new if rows is None else rows if new is None else _merge(rows, new)
            if rows is None:
                continue
        room = _make_room(rows, most)
        drafts = [answers.draft(item, room) if room else [] for item in rows.items]
        cap = sorted(len(d) for d in drafts)[len(drafts) // 2]  # the median: padding is work too
        drafts = [d[:cap] for d in drafts]
        rows = answers.advance(rows, _feed(model, rows, drafts, tokenizer.pad_token_id), drafts)
    return [[] if e is None else [answers.answer((c, j), e.boxes[j], tokenizer, config) for j in range(len(e.boxes))]
            for c, e in enumerate(encoded)]
