"""Patch instruction records -> model inputs with the loss on the answer tokens only.

Two ways to feed the images: :func:`collate` runs the processor (images resized and normalised,
pixel values for the vision tower); :func:`collate_text` tokenizes the text alone, with each image
placeholder expanded exactly as the processor expands it, for a run whose vision tower is frozen and
whose image tokens come from a :class:`~magseg_ray.train.features.ImageFeatureCache`. Both give the
same ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels`` (tested).
"""

from __future__ import annotations

import torch

from magseg_ray.prompt import BOI, END_OF_TURN

IGNORE = -100
"""Label of tokens that carry no loss (prompt, image tokens, padding)."""


def _with_labels(enc: dict, answer_lengths: list[int]) -> dict[str, torch.Tensor]:
    """``enc`` plus labels that cover the last ``n`` tokens of each (left-padded) row."""
    labels = torch.full_like(enc["input_ids"], IGNORE)
    for row, n in enumerate(answer_lengths):
        labels[row, -n:] = enc["input_ids"][row, -n:]
    enc["labels"] = labels
    return dict(enc)


def _answers(processor, records: list[dict]) -> tuple[list[str], list[int]]:
    answers = [r["target"] + END_OF_TURN for r in records]
    lengths = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    return answers, lengths


def collate(processor, records: list[dict]) -> dict[str, torch.Tensor]:
    """Tokenize prompt + target + end-of-turn for each record; labels cover the answer only.

    Prompts are left-padded, so each row ends with its answer: the last ``n`` labels of a row are
    its answer's ``n`` tokens (the target tokenizes the same alone as after the prompt's newline).
    """
    answers, lengths = _answers(processor, records)
    enc = processor(text=[r["prompt"] + a for r, a in zip(records, answers)],
                    images=[list(r["images"]) for r in records],
                    return_tensors="pt", add_special_tokens=False, padding=True)
    return _with_labels(enc, lengths)


def collate_text(processor, records: list[dict]) -> dict[str, torch.Tensor]:
    """:func:`collate` without pixel values: the image placeholders are expanded to the processor's
    image token sequence, and ``token_type_ids`` mark the image tokens as the processor does."""
    answers, lengths = _answers(processor, records)
    tokenizer = processor.tokenizer
    texts = [(r["prompt"] + a).replace(BOI, processor.full_image_sequence) for r, a in zip(records, answers)]
    enc = dict(tokenizer(texts, return_tensors="pt", add_special_tokens=False, padding=True))
    enc["token_type_ids"] = (enc["input_ids"] == tokenizer.convert_tokens_to_ids(tokenizer.image_token)).long()
    return _with_labels(enc, lengths)
