"""A tiny Qwen3-VL checkpoint folder laid out as ``Qwen/Qwen3-VL-2B-Instruct`` is on the hub.

Model: ``Qwen3VLForConditionalGeneration`` from a small ``Qwen3VLConfig`` (random weights, deepstack
on the last vision layer, interleaved M-RoPE). Files beside the weights, with the hub's values
(public copies of the 2B-Instruct folder): ``preprocessor_config.json`` (``Qwen2VLImageProcessorFast``,
patch 16, merge 2, temporal patch 2, size 65536-16777216 pixels, mean = std = 0.5,
``processor_class`` ``Qwen3VLProcessor``), ``video_preprocessor_config.json``
(``Qwen3VLVideoProcessor``: the file whose processor import wants torchvision),
``chat_template.json`` (the Instruct template: tools, system, ``<|vision_start|><|image_pad|>
<|vision_end|>`` per image, no default system turn) and the byte-level BPE ``Qwen2Tokenizer`` of
:mod:`tests.hub.qwen2_5_vl` with Qwen3's special tokens (``<think>`` among them).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.hub.qwen2_5_vl import SPECIAL, qwen_tokenizer

_VISION = ("{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}\n"
           "                    {%- set image_count.value = image_count.value + 1 %}\n"
           "                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}\n"
           "                    <|vision_start|><|image_pad|><|vision_end|>\n"
           "                {%- elif content.type == 'video' or 'video' in content %}\n"
           "                    {%- set video_count.value = video_count.value + 1 %}\n"
           "                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}\n"
           "                    <|vision_start|><|video_pad|><|vision_end|>\n"
           "                {%- elif 'text' in content %}\n"
           "                    {{- content.text }}\n"
           "                {%- endif %}")

CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                VISION
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                VISION
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""".replace("VISION", _VISION)
"""``Qwen/Qwen3-VL-*-Instruct``'s chat template (from a public copy), verbatim."""

QWEN3_SPECIAL = SPECIAL + ["<tool_call>", "</tool_call>", "<think>", "</think>"]

_SIZE = {"longest_edge": 16777216, "shortest_edge": 65536}
PREPROCESSOR = {"size": _SIZE, "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast"}
"""``Qwen/Qwen3-VL-2B-Instruct``'s ``preprocessor_config.json``, verbatim."""
VIDEO_PREPROCESSOR = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_sample_frames": True, "fps": 2,
    "min_frames": 4, "max_frames": 768, "return_metadata": False, "processor_class": "Qwen3VLProcessor",
    "video_processor_type": "Qwen3VLVideoProcessor"}
"""Its ``video_preprocessor_config.json``."""


def make_qwen3_vl(path: str | Path) -> Path:
    """Write the tiny Qwen3-VL folder into ``path`` (created); returns it."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = qwen_tokenizer(QWEN3_SPECIAL, path)
    torch.manual_seed(0)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True},
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=256,
                           deepstack_visual_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config.text_config.eos_token_id = ids["<|im_end|>"]
    Qwen3VLForConditionalGeneration(config).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (path / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR, indent=2))
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return path
