"""Shared-prefix packing: a prompt prefix once per sequence, several answers after it.

An unpacked training batch (:func:`~magseg_ray.train.batches.collate`) repeats in every row what
its patches share: the chip's image tokens and the instruction (and, for the G answers of one GRPO
prompt, the whole prompt). :func:`pack` lays out one row per shared prefix instead::

    [prefix][suffix 1, answer 1][suffix 2, answer 2] ... [padding]

``share="chip"`` (SFT): records of one chip share the prompt up to the patch part (the chip image
and the instruction, :data:`PATCH_MARK` ends it); each segment is the patch's suffix (its local
crop, its box) and answer. ``share="prompt"`` (the GRPO learner): records of one chip, box and
prompt share the whole prompt but its last token; each segment is that token and one answer (the
token whose logit predicts the answer's first one).

Each answer sees exactly the context it has alone, by three rules (:func:`attention_masks`):

- **context**: a segment's tokens see the prefix and their own segment, never another segment;
  prefix tokens see the prefix only (the padding sees itself, so no softmax row is empty);
- **causal order, with Gemma3's image blocks**: within that context a token sees the tokens before
  it, and every token of its own image block (a run of image tokens, ``token_type_ids == 1``, the
  blocks numbered by transformers' own ``get_block_sequence_ids_for_mask``), which is how Gemma3
  builds its masks from ``token_type_ids`` (full layers: OR(causal, block));
- **sliding window**, on position ids rather than row indices (sliding layers: AND(window,
  OR(causal, block)), a key within ``sliding_window - 1`` positions of the query).

Position ids restart after the prefix in every segment, so an answer's tokens sit at the positions
they have alone (RoPE sees the same distances). Gemma3 takes a ``{"full_attention": ...,
"sliding_attention": ...}`` dict as ``attention_mask`` as it is (it builds none of its own then,
and reads no ``token_type_ids``), as a boolean mask for ``sdpa`` and an additive one for ``eager``.
Logits are computed only where an answer token is predicted (``logits_to_keep`` as a boolean mask).

Per-answer losses and LoRA gradients equal the unpacked batch's to float rounding (tested on the
tiny preset with full and sliding layers and a window shorter than a packed row).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from magseg_ray.errors import ConfigError
from magseg_ray.prompt import BOI, END_OF_TURN, PATCH_MARK
from magseg_ray.train.batches import IGNORE

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


def _row(processor, records: list[dict], members: list[int], share: str) -> dict:
    """One packed row's token ids, segments, positions, labels, answer ids and image order."""
    first = records[members[0]]
    prefix = _tokenize(processor, [_prefix_text(first, share)])[0]
    answers = [records[i]["target"] + END_OF_TURN for i in members]
    whole = _tokenize(processor, [records[i]["prompt"] + a for i, a in zip(members, answers)])
    lengths = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    if any(len(t) - len(prefix) <= n for t, n in zip(whole, lengths)):
        prefix = prefix[:-1]  # an answer right after the prefix: its first token's logit is the prefix's last token's
    n_prefix_images = _prefix_text(first, share).count(BOI)
    ids, segment, position, labels, answer = list(prefix), [0] * len(prefix), list(range(len(prefix))), \
        [IGNORE] * len(prefix), [-1] * len(prefix)
    images = [(members[0], k) for k in range(n_prefix_images)]
    for s, (i, tokens, n) in enumerate(zip(members, whole, lengths), start=1):
        if tokens[: len(prefix)] != prefix:
            raise ConfigError(f"patch prompt {i} of chip {first['chip_id']!r} does not start with its chip's "
                              "shared prefix (or the tokenizer splits it elsewhere): cannot pack it")
        suffix = tokens[len(prefix):]
        ids += suffix
        segment += [s] * len(suffix)
        position += range(len(prefix), len(tokens))
        labels += [IGNORE] * (len(suffix) - n) + suffix[len(suffix) - n:]
        answer += [-1] * (len(suffix) - n) + [i] * n
        images += [(i, k) for k in range(n_prefix_images, len(records[i]["images"]))]
    return {"input_ids": ids, "segment_ids": segment, "position_ids": position, "labels": labels,
            "answer_ids": answer, "images": images}


def pack(processor, records: list[dict], share: str = "chip", features=None) -> dict[str, torch.Tensor]:
    """Patch records (``prompt``, ``images``, ``target``, ``chip_id``, ``box``) as packed rows, one
    per shared prefix (see module doc), right-padded to the longest. Besides the model's
    ``input_ids``, ``token_type_ids``, ``position_ids`` and ``attention_mask`` (2D, 1 on tokens: what
    throughput counts; :func:`model_inputs` turns it into Gemma3's masks), the batch holds
    ``segment_ids`` (0 prefix, ``s`` the row's ``s``-th answer, -1 padding), ``labels`` (answer
    tokens, else ``IGNORE``), ``answer_ids`` (the index in ``records`` of each answer token, else -1)
    and ``image_index``: for each image placeholder of the rows, in order, its index among the
    images of ``records`` flattened in order. The images go in once per placeholder: as the tokens
    of ``features`` (an :class:`~magseg_ray.train.features.ImageFeatureCache`) when given, else as
    ``pixel_values`` from the processor."""
    rows = [_row(processor, records, g, share) for g in _groups(records, share)]
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": processor.tokenizer.pad_token_id, "segment_ids": -1, "position_ids": 0, "labels": IGNORE,
            "answer_ids": -1}
    batch = {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows]) for k, v in fill.items()}
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


def attention_masks(batch: dict, config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Gemma3's per-layer-type attention masks (``rows x 1 x L x L``) for a packed ``batch``
    under ``config`` (the Gemma3 config; see module doc)."""
    from transformers.models.gemma3.modeling_gemma3 import get_block_sequence_ids_for_mask

    text = config.get_text_config()
    segment, position = batch["segment_ids"], batch["position_ids"]
    q, k = segment[:, :, None], segment[:, None, :]
    context = ((k == 0) & (q >= 0)) | ((k == q) & (q > 0))
    index = torch.arange(segment.shape[1], device=segment.device)
    block = get_block_sequence_ids_for_mask(batch["token_type_ids"], device=segment.device)
    same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    diagonal = (index[:, None] == index[None, :]) & (q < 0)
    visible = (context & ((index[None, None, :] <= index[None, :, None]) | same_block)) | diagonal
    window = position[:, None, :] > position[:, :, None] - (text.sliding_window or segment.shape[1] + 1)
    masks = {"full_attention": visible, "sliding_attention": (visible & window) | diagonal}
    implementation = config._attn_implementation
    if implementation == "sdpa":
        return {name: m[:, None] for name, m in masks.items()}
    if implementation == "eager":
        low = torch.finfo(dtype).min
        return {name: torch.where(m[:, None], 0.0, low).to(dtype) for name, m in masks.items()}
    raise ConfigError(f"packed batches need the sdpa or eager attention implementation, the model has {implementation!r}")


def model_inputs(model, batch: dict) -> dict:
    """A packed batch as keyword arguments of ``model`` (a Gemma3 model, PEFT- or DeepSpeed-wrapped),
    logits kept where an answer token is predicted. Images come as ``pixel_values`` (one per
    placeholder, in order) or ``image_features`` (cached tokens, likewise); either is taken as is."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    core = getattr(model, "module", model)
    parameter = next(core.parameters())
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
              "attention_mask": attention_masks(batch, core.config, parameter.dtype),
              "logits_to_keep": torch.nn.functional.pad(batch["labels"][:, 1:] != IGNORE, (0, 1))}
    if "image_features" in batch:
        inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=batch["image_features"])}
    elif "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"]
    return inputs


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every answer token of a packed batch, in row order, and the index in the
    packed records of the answer it belongs to."""
    logits = model(**model_inputs(model, batch)).logits.float() / temperature
    following = batch["labels"][:, 1:] != IGNORE
    targets, answers = batch["labels"][:, 1:][following], batch["answer_ids"][:, 1:][following]
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
