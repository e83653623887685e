"""Patch instruction records -> model inputs with the loss on the answer tokens only."""

from __future__ import annotations

import torch

from magseg_ray.model.tokenizer import END_OF_TURN

IGNORE = -100
"""Label of tokens that carry no loss (prompt, image tokens, padding)."""


def collate(processor, records: list[dict]) -> dict[str, torch.Tensor]:
    """Tokenize prompt + target + end-of-turn for each record; labels cover the answer only.

    Prompts are left-padded, so each row ends with its answer: the last ``n`` labels of a row are
    its answer's ``n`` tokens (the target tokenizes the same alone as after the prompt's newline).
    """
    answers = [r["target"] + END_OF_TURN for r in records]
    enc = processor(text=[r["prompt"] + a for r, a in zip(records, answers)],
                    images=[list(r["images"]) for r in records],
                    return_tensors="pt", add_special_tokens=False, padding=True)
    lengths = [len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    labels = torch.full_like(enc["input_ids"], IGNORE)
    for row, n in enumerate(lengths):
        labels[row, -n:] = enc["input_ids"][row, -n:]
    enc["labels"] = labels
    return dict(enc)
