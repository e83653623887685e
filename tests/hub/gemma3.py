"""A Gemma3 checkpoint folder laid out as the hub's ``google/gemma-3-4b-it`` is, tiny or at full size.

:func:`make_gemma3` writes what that folder holds: ``config.json`` (the real ``Gemma3Config`` with
the real token ids and vocabulary size, small widths), ``generation_config.json``,
``preprocessor_config.json`` and ``processor_config.json`` (the hub's values, the image side the
tiny vision tower's), ``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json``
and ``chat_template.jinja`` (the hub's template, which starts with ``{{ bos_token }}``), and random
weights in safetensors. Values come from public copies of those files (see the guide's "Real
checkpoints" section); nothing is downloaded.

The tokenizer is of Gemma's kind, not the project's: a byte-fallback BPE over a 262,145-entry
vocabulary with the special tokens at Gemma's ids, spaces normalised to ``▁``, no pre-tokenizer,
merges that build whole words (and ``▁word``) from letters, and no merge that touches a digit, so
every digit is its own token as in Gemma's vocabulary. Some multi-letter pieces made only of class
codes (``ff``, ``fe``, ``eb``) and newline runs are in the vocabulary, as English subwords are in
Gemma's: the R-RLE grammar must handle pieces longer than one character.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

PAD, EOS, BOS, UNK, MASK = "<pad>", "<eos>", "<bos>", "<unk>", "<mask>"
SPECIAL_IDS = {PAD: 0, EOS: 1, BOS: 2, UNK: 3, MASK: 4, "[multimodal]": 5, "<start_of_turn>": 105,
               "<end_of_turn>": 106, "<start_of_image>": 255999, "<end_of_image>": 256000,
               "<image_soft_token>": 262144}
NEWLINES = {"\n": 107, "\n\n": 108, "\n\n\n": 109}
BYTES_AT = 238
"""``<0x00>`` .. ``<0xFF>`` sit at ids 238..493, as in Gemma's vocabulary."""
VOCAB_SIZE = 262208
"""``config.json``'s ``text_config.vocab_size`` (the tokenizer holds 262,145 entries)."""

SIZES = {
    "tiny": {"mm_tokens_per_image": 16,
             "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                             "query_pre_attn_scalar": 32},
             "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 112, "patch_size": 14}},
    "4b": {"mm_tokens_per_image": 256,
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                           "query_pre_attn_scalar": 256},
           "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                             "num_attention_heads": 16, "image_size": 896, "patch_size": 14}},
}
"""Widths: ``tiny`` for tests, ``4b`` as ``google/gemma-3-4b-it``'s ``config.json`` (the benchmark's)."""

CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""
"""``google/gemma-3-4b-it``'s chat template, verbatim (it starts with ``{{ bos_token }}``)."""

_EXTRA_WORDS = ("Patch x y Segment this image chip into classes Answer for one patch line per row "
                "Find the fields orchards rice paddies box JSON bbox label Output")
_CODE_PIECES = ("ff", "fe", "ef", "eb", "be", "bf", "fb", "ee", "bb", "**")


def _words(corpus: list[str]) -> list[str]:
    """Every word of ``corpus`` with its ``▁``, then bare (letters only: digits never merge); the
    ``▁`` forms first, so their merges rank first and ``" this"`` is one piece, as in Gemma's."""
    words = sorted({w for text in [*corpus, _EXTRA_WORDS] for w in re.findall(r"[A-Za-z]{2,}", text)})
    return ["▁" + w for w in [*words, *string.ascii_letters]] + words


def _merges(pieces: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Left-to-right merges that build each piece from its characters, and every piece they make."""
    merges, made = {}, []
    for piece in pieces:
        left = piece[0]
        for ch in piece[1:]:
            if (left, ch) not in merges:
                merges[(left, ch)] = None
                made.append(left + ch)
            left += ch
    return list(merges), made


def tokenizer_json(corpus: list[str]) -> dict:
    """A Gemma-kind ``tokenizer.json``: the ids above, single characters, byte tokens, and merges."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    merges, made = _merges([*_words(corpus), *_CODE_PIECES])
    vocab = {**SPECIAL_IDS, **NEWLINES, **{f"<0x{b:02X}>": BYTES_AT + b for b in range(256)}}
    taken = set(vocab.values())
    free = (i for i in range(SPECIAL_IDS["<image_soft_token>"]) if i not in taken)
    for piece in [*(c for c in string.printable if c not in "\n \t\r\x0b\x0c"), "▁", *made]:
        vocab.setdefault(piece, next(free))
    for i in free:  # Gemma's vocabulary is full: fill the ids nothing here uses
        vocab[f"<unused{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIAL_IDS))
    data = json.loads(tok.to_str())
    data["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}], "pair": [
        {"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [SPECIAL_IDS[BOS]], "tokens": [BOS]}}}
    return data


TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
    "unk_token": UNK, "mask_token": MASK, "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>", "clean_up_tokenization_spaces": False,
    "extra_special_tokens": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                             "image_token": "<image_soft_token>"},
    "model_max_length": 1000000000000000019884624838656, "padding_side": "left",
    "processor_class": "Gemma3Processor", "sp_model_kwargs": None, "spaces_between_special_tokens": False,
    "tokenizer_class": "GemmaTokenizer", "use_default_system_prompt": False,
}
SPECIAL_TOKENS_MAP = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK, "mask_token": MASK,
                      "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                      "image_token": "<image_soft_token>"}
def preprocessor(size: str) -> dict:
    """``preprocessor_config.json``: the hub's values, the image side the vision tower's."""
    side, tokens = SIZES[size]["vision_config"]["image_size"], SIZES[size]["mm_tokens_per_image"]
    return {
    "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": tokens,
    "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
    "rescale_factor": 0.00392156862745098, "size": {"height": side, "width": side},
    }


def config_dict(size: str = "tiny") -> dict:
    """``config.json``: the 4B's token ids, vocabulary and options, at the widths of ``size``."""
    widths = SIZES[size]
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "boi_token_index": SPECIAL_IDS["<start_of_image>"], "eoi_token_index": SPECIAL_IDS["<end_of_image>"],
        "image_token_index": SPECIAL_IDS["<image_soft_token>"], "initializer_range": 0.02,
        "mm_tokens_per_image": widths["mm_tokens_per_image"], "torch_dtype": "bfloat16",
        "text_config": {"model_type": "gemma3_text", "sliding_window": 1024, "vocab_size": VOCAB_SIZE,
                        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, **widths["text_config"]},
        "vision_config": {"model_type": "siglip_vision_model", "vision_use_head": False, **widths["vision_config"]},
    }


def make_gemma3(path: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write the hub-layout Gemma3 folder of ``size`` at ``path`` (random bf16 weights, built in
    bf16: the 4B takes about 8.6 GB, not the 17 GB a float32 build would); return ``path``."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from magseg_ray.prompt import prompt_corpus

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = SPECIAL_IDS
    files = {
        "tokenizer.json": tokenizer_json(prompt_corpus()), "tokenizer_config.json": TOKENIZER_CONFIG,
        "special_tokens_map.json": SPECIAL_TOKENS_MAP, "preprocessor_config.json": preprocessor(size),
        "processor_config.json": {"image_seq_length": SIZES[size]["mm_tokens_per_image"],
                                  "processor_class": "Gemma3Processor"},
        "generation_config.json": {"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS], ids["<end_of_turn>"]],
                                   "pad_token_id": ids[PAD], "cache_implementation": "hybrid", "do_sample": True,
                                   "top_k": 64, "top_p": 0.95},
    }
    for name, value in files.items():
        (path / name).write_text(json.dumps(value, indent=2) + "\n")
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(config_dict(size)))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(path)  # writes config.json and the weights; the files above stay the hub's
    (path / "generation_config.json").write_text(json.dumps(files["generation_config.json"], indent=2) + "\n")
    return path
