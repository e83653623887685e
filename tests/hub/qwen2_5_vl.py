"""A tiny Qwen2.5-VL checkpoint folder laid out as ``Qwen/Qwen2.5-VL-3B-Instruct`` is on the hub.

Model: ``Qwen2_5_VLForConditionalGeneration`` from a small ``Qwen2_5_VLConfig`` (random weights).
Files beside the weights, with the hub's values (public copies of the 3B/7B-Instruct folders):
``preprocessor_config.json`` (``Qwen2VLImageProcessor``, patch 14, merge 2, temporal patch 2,
min/max pixels 3136 / 12845056, CLIP mean/std, ``processor_class`` ``Qwen2_5_VLProcessor``),
``chat_template.json`` (the hub's template: default system turn, ``<|vision_start|><|image_pad|>
<|vision_end|>`` per image), and a byte-level BPE ``Qwen2Tokenizer`` with Qwen's special tokens
(at small ids; ``config.json`` names them).
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
"""``Qwen/Qwen2.5-VL-7B-Instruct``'s chat template (revision cc594898), verbatim."""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
"""Qwen2.5's special tokens in their hub order (ids 151643-151656 there)."""

PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}
"""``Qwen/Qwen2.5-VL-3B-Instruct``'s ``preprocessor_config.json``, verbatim."""


def qwen_tokenizer(special: list[str], path: Path):
    """The byte-level BPE saved in ``path`` as a hub ``Qwen2Tokenizer`` (eos ``<|im_end|>``, pad
    ``<|endoftext|>``, no bos); returns it with its special-token ids."""
    from tests.hub.vocab import byte_bpe

    tokenizer = byte_bpe(special)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.save_pretrained(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, model_max_length=131072, errors="replace")
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tokenizer, {t: tokenizer.convert_tokens_to_ids(t) for t in special}


def make_qwen2_5_vl(path: str | Path) -> Path:
    """Write the tiny Qwen2.5-VL folder into ``path`` (created); returns it."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = qwen_tokenizer(SPECIAL, path)
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return path
