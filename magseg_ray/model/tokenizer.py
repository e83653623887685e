"""The project tokenizer for offline Gemma3 presets.

Real Gemma3 checkpoints bring their own tokenizer; the ``tiny`` and ``small`` presets need one that
is built here, offline, and is small enough that the embedding table does not dominate the model.

Design: a pre-tokenizer isolates every whitespace character, every punctuation character, each
run of up to three digits and each run of letters; a piece that is in the vocabulary is one token,
any other is spelled in characters (a BPE model with no merges and ``ignore_merges``). The
vocabulary is every printable ASCII character, every 2- and 3-digit string, and every word of the
prompt corpus given to :func:`build_tokenizer`. So:

- R-RLE mask text costs one token per class code, run length (up to 999), ``*`` and newline;
- prompt words are one token each;
- any ASCII text still tokenizes (character fallback), and decoding is exact (the ``Fuse`` decoder
  concatenates pieces, and every whitespace character is its own piece).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from magseg_ray.prompt import BOI, BOS, END_OF_TURN, START_OF_TURN

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
EOI, IMAGE = "<end_of_image>", "<image_soft_token>"
# Gemma3's ids for pad/eos/bos are 0/1/2; keep the same order.
SPECIAL_TOKENS = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN, BOI, EOI, IMAGE)

_PIECE = r"\d{1,3}|[A-Za-z]+|\s|[^\sA-Za-z\d]"
_WORD = re.compile(r"[A-Za-z]{2,}")


def build_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build the project tokenizer whose word pieces cover every word in ``corpus``."""
    vocab: dict[str, int] = {}
    for token in (
        *SPECIAL_TOKENS,
        *string.printable,  # letters, digits, punctuation, whitespace: the fallback for any ASCII
        *(f"{n:02d}" for n in range(100)),  # every run of 2 and 3 digits
        *(f"{n:03d}" for n in range(1000)),
        *sorted({w for text in corpus for w in _WORD.findall(text)}),
    ):
        vocab.setdefault(token, len(vocab))

    # ignore_merges: a piece found in the vocabulary is one token; any other falls back to characters.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
        padding_side="left",
        model_max_length=4096,
    )
