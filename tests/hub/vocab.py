"""Small tokenizers of the kinds the hub's checkpoints carry, over GeoSeg's own prompt words.

Each is the transformers tokenizer class a hub folder names (same normaliser, pre-tokeniser, model
and decoder), with a vocabulary small enough for a tiny model and the family's special tokens:

- :func:`byte_bpe`: Qwen2's byte-level BPE (``Qwen2Tokenizer``), trained on the corpus;
- :func:`clip_bpe`: CLIP's lower-cased BPE with ``</w>`` word ends (``CLIPTokenizer``), trained;
- :func:`gemma_bpe`: Gemma's ``▁``-spaced BPE with byte fallback (``GemmaTokenizer``): every
  digit its own token, any other character a byte token when it is not in the vocabulary.
"""

from __future__ import annotations

import string


def corpus() -> list[str]:
    from magseg_ray.geoseg.prompts import corpus as prompts

    return prompts() + ["the largest field", "the pond", "fields", "detect field", "0 1 2 3 4 5 6 7 8 9"]


def byte_bpe(special: list[str], vocab_size: int = 600):
    """A Qwen2 byte-level BPE with ``special`` added (in order) after the trained vocabulary."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer().train_new_from_iterator(corpus(), vocab_size=vocab_size, new_special_tokens=special)


def clip_bpe(vocab_size: int = 600):
    """A CLIP BPE (``<|startoftext|>``, ``<|endoftext|>`` as CLIP's) trained on the corpus."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer().train_new_from_iterator(corpus(), vocab_size=vocab_size)


def gemma_bpe(special: list[str], **kwargs):
    """A Gemma BPE: pad/eos/bos/unk/mask at Gemma's ids 0-4, then ``special``, the 256 byte tokens,
    printable ASCII one character each, and every corpus word (``▁word`` and ``word``) by merges;
    ``kwargs`` go to ``GemmaTokenizer`` (e.g. ``extra_special_tokens``)."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for token in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *special, *(f"<0x{b:02X}>" for b in range(256)),
                  *(c if c != " " else "▁" for c in string.printable if c not in "\t\n\r\x0b\x0c")):
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted({w for text in corpus() for w in text.replace(",", " ").split() if w.isalpha()})
    for word in words:
        for piece in (word, "▁" + word):
            for i in range(2, len(piece) + 1):
                left, right = piece[: i - 1], piece[i - 1]
                if piece[:i] not in vocab:
                    vocab[piece[:i]] = len(vocab)
                    merges.append((left, right))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, **kwargs)
    tokenizer.add_special_tokens({"additional_special_tokens": special}, replace_extra_special_tokens=False)
    return tokenizer
