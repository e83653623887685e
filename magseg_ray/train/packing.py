"""Shared-prefix packing: a prompt prefix run once, several answers after it.

An unpacked training batch (:func:`~magseg_ray.train.batches.collate`) repeats in every row what
its patches share: the chip's image tokens and the instruction (and, for the G answers of one GRPO
prompt, the whole prompt). :func:`pack` lays out a group's shared prefix once, and its segments
after it::

    prefix rows   [prefix of group 0][padding]      [prefix of group 1] ...
    segment rows  [segment][segment][padding]       (each row: segments of one group)

``share="chip"`` (SFT): records of one chip share the prompt up to the patch part (the chip image
and the instruction, :data:`PATCH_MARK` ends it); each segment is the patch's suffix (its local
crop, its box) and answer. ``share="prompt"`` (the GRPO learner): records of one chip, box and
prompt share the whole prompt but its last token; each segment is that token and one answer (the
token whose logit predicts the answer's first one).

The model runs twice (:func:`token_logprobs`): the prefix rows alone, their keys and values of every
layer kept (with their gradients), then the segment rows, each attending to its prefix row's keys
and values put in front of its own. Attention so costs a segment row ``width x (prefix + width)``,
not a whole group's square. A group's segments go into rows of one width for the batch
(first fit by decreasing length), the width that makes the least work (:func:`_layout`: rows x
width, attention weighed by :data:`KEY_COST`).

Each answer sees exactly the context it has alone, by three rules (:func:`attention_masks`):

- **context**: a segment's tokens see their prefix and their own segment, never another segment;
  prefix tokens see the prefix only (padding sees itself, so no softmax row is empty);
- **causal order, with Gemma3's image blocks**: within that context a token sees the tokens before
  it, and every token of its own image block (a run of image tokens, ``token_type_ids == 1``, the
  blocks numbered by transformers' own ``get_block_sequence_ids_for_mask``), which is how Gemma3
  builds its masks from ``token_type_ids`` (full layers: OR(causal, block));
- **sliding window**, on position ids (sliding layers: AND(window, OR(causal, block)), a key within
  ``sliding_window - 1`` positions of the query).

Position ids of a segment continue from its prefix's length, so an answer's tokens sit at the
positions they have alone (RoPE sees the same distances). Gemma3 takes a ``{"full_attention": ...,
"sliding_attention": ...}`` dict as ``attention_mask`` as it is (it builds none of its own then,
and reads no ``token_type_ids``), as a boolean mask for ``sdpa`` and an additive one for ``eager``.
Logits are computed only where an answer token is predicted (``logits_to_keep`` as a boolean mask).

Per-answer losses and LoRA gradients equal the unpacked batch's to float rounding (tested on the
tiny preset with full and sliding layers and a window shorter than a prefix, two segments a row).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from magseg_ray.errors import ConfigError
from magseg_ray.prompt import BOI, END_OF_TURN, PATCH_MARK
from magseg_ray.train.batches import IGNORE

KEY_COST = 2048
"""A token's work outside attention, in attention keys' worth: what a segment row's width is
weighed against (see :func:`_layout`)."""

SHARES = ("chip", "prompt")
"""What the answers of one packed row share (see module doc)."""


def _prefix_text(record: dict, share: str) -> str:
    prompt = record["prompt"]
    if share == "prompt":
        return prompt
    if PATCH_MARK not in prompt:
        raise ConfigError(f"patch prompt of chip {record.get('chip_id')!r} has no {PATCH_MARK!r}: cannot pack it")
    return prompt[: prompt.rindex(PATCH_MARK) + len(PATCH_MARK)]


def _groups(records: list[dict], share: str) -> list[list[int]]:
    """Indices of ``records`` by shared prefix, in order of first appearance."""
    if share not in SHARES:
        raise ConfigError(f"share must be one of {', '.join(SHARES)}, got {share!r}")
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        key = (r["chip_id"], _prefix_text(r, share))
        groups[key + ((tuple(r["box"]),) if share == "prompt" else ())].append(i)
    return list(groups.values())


def _tokenize(processor, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` with each image placeholder expanded as the processor expands it."""
    expanded = [t.replace(BOI, processor.full_image_sequence) for t in texts]
    return processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]


def _group(processor, records: list[dict], members: list[int], share: str) -> tuple[dict, list[dict]]:
    """One group's prefix and its segments: token ids, positions, labels, answer ids and image order."""
    first = records[members[0]]
    prefix = _tokenize(processor, [_prefix_text(first, share)])[0]
    answers = [records[i]["target"] + END_OF_TURN for i in members]
    whole = _tokenize(processor, [records[i]["prompt"] + a for i, a in zip(members, answers)])
    lengths = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    if any(len(t) - len(prefix) <= n for t, n in zip(whole, lengths)):
        prefix = prefix[:-1]  # an answer right after the prefix: its first token's logit is the prefix's last token's
    n_prefix_images = _prefix_text(first, share).count(BOI)
    head = {"input_ids": prefix, "segment_ids": [0] * len(prefix), "position_ids": list(range(len(prefix))),
            "labels": [IGNORE] * len(prefix), "answer_ids": [-1] * len(prefix),
            "images": [(members[0], k) for k in range(n_prefix_images)]}
    segments = []
    for i, tokens, n in zip(members, whole, lengths):
        if tokens[: len(prefix)] != prefix:
            raise ConfigError(f"patch prompt {i} of chip {first['chip_id']!r} does not start with its chip's "
                              "shared prefix (or the tokenizer splits it elsewhere): cannot pack it")
        suffix = tokens[len(prefix):]
        segments.append({"input_ids": suffix, "position_ids": list(range(len(prefix), len(tokens))),
                         "labels": [IGNORE] * (len(suffix) - n) + suffix[len(suffix) - n:],
                         "answer_ids": [-1] * (len(suffix) - n) + [i] * n,
                         "images": [(i, k) for k in range(n_prefix_images, len(records[i]["images"]))]})
    return head, segments


def _bins(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` in rows of at most ``width``, first fit by decreasing length, each row's
    indices in order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), len(bins))
        if j == len(bins):
            bins.append([])
            room.append(width)
        bins[j].append(i)
        room[j] -= lengths[i]
    return [sorted(b) for b in bins]


def _layout(groups: list[list[int]], prefix: int) -> list[list[list[int]]]:
    """Each group's segments (their lengths in ``groups``) in rows of one width, the width that makes
    the least work: rows x width x (:data:`KEY_COST` + ``prefix`` + width) (see module doc)."""
    longest, top = max(max(g) for g in groups), max(sum(g) for g in groups)

    def cost(width: int) -> int:
        return sum(len(_bins(g, width)) for g in groups) * width * (KEY_COST + prefix + width)

    width = min(range(longest, top + 1, max(1, longest // 4)), key=cost)
    return [_bins(g, width) for g in groups]


def _concat(parts: list[dict], prefix_row: int) -> dict:
    """One segment row: ``parts`` (segments of one group) one after another, segment ids 1, 2, ..."""
    row = {k: [x for p in parts for x in p[k]] for k in ("input_ids", "position_ids", "labels", "answer_ids", "images")}
    row["segment_ids"] = [s for s, p in enumerate(parts, start=1) for _ in p["input_ids"]]
    return {**row, "prefix_row": prefix_row}


def pack(processor, records: list[dict], share: str = "chip", features=None) -> dict[str, torch.Tensor]:
    """Patch records (``prompt``, ``images``, ``target``, ``chip_id``, ``box``) as packed rows (see
    module doc): first one prefix row per group of records that share a prefix, then the segment
    rows, all right-padded to the longest. Besides the model's ``input_ids``, ``token_type_ids`` and
    ``position_ids``, the batch holds ``attention_mask`` (1 on tokens: what throughput counts; the
    model gets :func:`attention_masks`), ``segment_ids`` (0 prefix, ``s`` the row's ``s``-th segment,
    -1 padding), ``prefix_row`` (per row: the prefix row its segments follow, -1 for a prefix row),
    ``labels`` (answer tokens, else ``IGNORE``), ``answer_ids`` (the index in ``records`` of each
    answer token, else -1) and ``image_index``: for each image placeholder of the rows, in order, its
    index among the images of ``records`` flattened in order. The images go in once per placeholder:
    as the tokens of ``features`` (an :class:`~magseg_ray.train.features.ImageFeatureCache`) when
    given, else as ``pixel_values`` from the processor."""
    groups = [_group(processor, records, g, share) for g in _groups(records, share)]
    rows = [{**head, "prefix_row": -1} for head, _ in groups]
    layout = _layout([[len(s["input_ids"]) for s in segments] for _, segments in groups],
                     max(len(head["input_ids"]) for head, _ in groups))
    for g, ((_, segments), bins) in enumerate(zip(groups, layout)):
        rows += [_concat([segments[i] for i in b], g) for b in bins]
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": processor.tokenizer.pad_token_id, "segment_ids": -1, "position_ids": 0, "labels": IGNORE,
            "answer_ids": -1}
    batch = {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows]) for k, v in fill.items()}
    batch["prefix_row"] = torch.tensor([r["prefix_row"] for r in rows])
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    batch["token_type_ids"] = (batch["input_ids"] == image_token).long()
    batch["attention_mask"] = (batch["segment_ids"] >= 0).long()
    offsets = [0]
    for r in records:
        offsets.append(offsets[-1] + len(r["images"]))
    batch["image_index"] = torch.tensor([offsets[i] + k for r in rows for i, k in r["images"]], dtype=torch.long)
    if features is not None:
        batch["image_features"] = features(records)[batch["image_index"].to(features.device)]
    else:
        images = [image for r in records for image in r["images"]]
        batch["pixel_values"] = processor.image_processor(
            images=[images[i] for i in batch["image_index"].tolist()], return_tensors="pt")["pixel_values"]
    return batch


def attention_masks(keys: dict, queries: int, config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Gemma3's per-layer-type attention masks (``rows x 1 x queries x keys``) of the last ``queries``
    of ``keys`` (``segment_ids``, ``position_ids`` and ``token_type_ids``, ``rows x keys``: a
    prefix row alone, or a segment row after its prefix row) under ``config`` (see module doc)."""
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    segment, position = keys["segment_ids"], keys["position_ids"]
    n = segment.shape[1]
    q, k = segment[:, -queries:, None], segment[:, None, :]
    qp, kp = position[:, -queries:, None], position[:, None, :]
    context = ((k == 0) & (q >= 0)) | ((k == q) & (q > 0))
    block = get_block_sequence_ids_for_mask(keys["token_type_ids"], device=segment.device)
    same_block = (block[:, -queries:, None] == block[:, None, :]) & (block[:, -queries:, None] >= 0)
    index = torch.arange(n, device=segment.device)
    own = (index[n - queries:, None] == index[None, :]) & (q < 0)
    visible = (context & ((kp <= qp) | same_block)) | own
    window = kp > qp - (config.get_text_config().sliding_window or int(position.max()) + 1)
    masks = {"full_attention": visible, "sliding_attention": (visible & window) | own}
    implementation = config._attn_implementation
    if implementation == "sdpa":
        return {name: m[:, None] for name, m in masks.items()}
    if implementation == "eager":
        low = torch.finfo(dtype).min
        return {name: torch.where(m[:, None], 0.0, low).to(dtype) for name, m in masks.items()}
    raise ConfigError(f"packed batches need the sdpa or eager attention implementation, the model has {implementation!r}")


class _PrefixCache:
    """Gemma3's ``past_key_values`` for the two passes: the prefix pass records each layer's keys and
    values; the segment pass (``rows`` set: each segment row's prefix row) puts its prefix row's in
    front of each row's own, gradients kept."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs):
        if self.rows is None:
            self.layers.append((keys, values))
            return keys, values
        k, v = self.layers[layer]
        return torch.cat([k[self.rows], keys], 2), torch.cat([v[self.rows], values], 2)


def _part(batch: dict, rows: slice, images: slice) -> dict:
    """The rows ``rows`` of a packed batch, cut to their longest row, with their images."""
    width = int(batch["attention_mask"][rows].sum(1).max())
    part = {k: batch[k][rows, :width] for k in ("input_ids", "segment_ids", "position_ids", "token_type_ids", "labels")}
    if not part["token_type_ids"].any():
        return part
    if "image_features" in batch:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        part["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=batch["image_features"][images])}
    elif "pixel_values" in batch:
        part["pixel_values"] = batch["pixel_values"][images]
    return part


def _forward(model, part: dict, masks: dict, cache: _PrefixCache, keep: torch.Tensor):
    inputs = {k: part[k] for k in ("input_ids", "position_ids", "mm_encoder_outputs", "pixel_values") if k in part}
    return model(**inputs, attention_mask=masks, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every answer token of a packed batch, in row order, and the index in the
    packed records of the answer it belongs to: the prefix rows run once, their keys and values
    kept, then the segment rows after them (see module doc)."""
    core = getattr(model, "module", model)
    config, dtype = core.config, next(core.parameters()).dtype
    n = int((batch["prefix_row"] < 0).sum())
    split = int(batch["token_type_ids"][:n].sum()) // config.mm_tokens_per_image  # the prefix rows' images
    prefix, rows = _part(batch, slice(0, n), slice(0, split)), _part(batch, slice(n, None), slice(split, None))
    cache = _PrefixCache()
    _forward(model, prefix, attention_masks(prefix, prefix["input_ids"].shape[1], config, dtype), cache,
             torch.zeros_like(prefix["input_ids"], dtype=torch.bool))
    cache.rows = batch["prefix_row"][n:]
    keys = {k: torch.cat([prefix[k][cache.rows], rows[k]], 1) for k in ("segment_ids", "position_ids", "token_type_ids")}
    following = rows["labels"][:, 1:] != IGNORE
    logits = _forward(model, rows, attention_masks(keys, rows["input_ids"].shape[1], config, dtype), cache,
                      torch.nn.functional.pad(following, (0, 1))).float() / temperature
    targets, answers = rows["labels"][:, 1:][following], batch["answer_ids"][n:, 1:rows["labels"].shape[1]][following]
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none"), answers


def answer_loss(model, batch: dict, mean: str = "answer") -> torch.Tensor:
    """:func:`~magseg_ray.train.sft.answer_loss` of a packed batch: the answer tokens' cross-entropy,
    averaged per answer then over answers (``answer``) or over all answer tokens (``token``)."""
    logp, answers = token_logprobs(model, batch)
    if mean == "token":
        return -logp.mean()
    n = int(answers.max()) + 1
    total = torch.zeros(n, device=logp.device).index_add(0, answers, -logp)
    count = torch.zeros(n, device=logp.device).index_add(0, answers, torch.ones_like(logp))
    return (total[count > 0] / count[count > 0]).mean()


def answer_logprobs(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~magseg_ray.train.grpo.answer_logprobs` of a packed batch: ``answers x n`` log-probs of
    each answer's tokens (right-aligned, answers in the packed records' order, ``n`` the longest
    answer's length) and their mask."""
    logp, answers = token_logprobs(model, batch, temperature)
    count = torch.bincount(answers)
    width = int(count.max())
    order = torch.arange(len(answers), device=answers.device)
    first = torch.full_like(count, len(answers)).scatter_reduce(0, answers, order, "amin")
    column = width - count[answers] + order - first[answers]
    grid = torch.zeros(len(count), width, device=logp.device, dtype=logp.dtype).index_put((answers, column), logp)
    mask = torch.zeros(len(count), width, dtype=torch.bool, device=logp.device).index_put(
        (answers, column), torch.ones_like(answers, dtype=torch.bool))
    return grid, mask


def draw(buffer: list[dict], rng, n: int, per_chip: int) -> list[dict]:
    """``n`` records taken from ``buffer`` (SFT's shuffle buffer) at random, ``per_chip`` of a chip at
    a time: a random record, then up to ``per_chip - 1`` more of its chip, chosen at random. A batch
    so drawn packs into about ``n / per_chip`` rows."""
    picked: list[dict] = []
    while len(picked) < n and buffer:
        chip = buffer[rng.randrange(len(buffer))]["chip_id"]
        same = [i for i, r in enumerate(buffer) if r["chip_id"] == chip]
        take = sorted(rng.sample(same, min(per_chip, len(same), n - len(picked))), reverse=True)
        picked += [buffer.pop(i) for i in take]
    return picked
