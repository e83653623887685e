import json

import numpy as np
import pytest
import torch

from magseg_ray.errors import ModelLoadError
from magseg_ray.model.checkpoint import check_checkpoint_dir, load_model
from magseg_ray.model.lora import (
    LoraSettings,
    attach_lora,
    load_adapter,
    trainable_share,
)
from magseg_ray.model.presets import build_model
from magseg_ray.prompt import build_patch_prompt
from tests.hub.gemma3 import config_dict


def encode_prompt(processor, prompt):
    return processor(text=[prompt.text], images=[prompt.images], return_tensors="pt", add_special_tokens=False)


def test_generate_then_save_and_reload_model_processor_adapter(tiny_dir, tmp_path):
    model, processor = load_model(tiny_dir)
    chip = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    inputs = encode_prompt(processor, build_patch_prompt(chip, (32, 64, 64, 96)))
    peft_model = attach_lora(model)
    with torch.no_grad():  # fresh LoRA B is zero: make the adapter change the outputs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    out = peft_model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 12 or out[0, -1] in model.generation_config.eos_token_id
    peft_model.save_pretrained(tmp_path / "adapter")

    base2, processor2 = load_model(tiny_dir)
    inputs2 = encode_prompt(processor2, build_patch_prompt(chip, (32, 64, 64, 96)))
    assert torch.equal(inputs["input_ids"], inputs2["input_ids"])
    assert torch.equal(inputs["pixel_values"], inputs2["pixel_values"])
    reloaded = load_adapter(base2, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(peft_model(**inputs).logits, reloaded(**inputs2).logits)
    assert torch.equal(out, reloaded.generate(**inputs2, max_new_tokens=12, do_sample=False))

    base3, _ = load_model(tiny_dir)  # the adapter really changes the model
    with torch.no_grad():
        assert not torch.allclose(base3(**inputs2).logits, reloaded(**inputs2).logits)


def test_lora_targets_language_model_projections_only(tiny_dir):
    model, _ = load_model(tiny_dir)
    peft_model = attach_lora(model, LoraSettings(r=4))
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert lora_modules and all(".language_model." in n for n in lora_modules)
    assert len(lora_modules) == 7 * model.config.text_config.num_hidden_layers
    trainable, total, share = trainable_share(peft_model)
    assert all(".lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert 0 < trainable < total and share == pytest.approx(trainable / total)


def test_missing_or_wrong_model_dirs(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert' model, not a Gemma3 image-text-to-text"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(ModelLoadError, match="no vision tower"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(ModelLoadError, match="has no weights"):
        load_model(tmp_path)


def test_corrupt_weights(tiny_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ModelLoadError, match="cannot load Gemma3 checkpoint"):
        load_model(broken)


def test_adapter_from_another_model(tiny_dir, tmp_path):
    small, processor = build_model("small")
    attach_lora(small, LoraSettings(r=4)).save_pretrained(tmp_path / "small_adapter")
    tiny, _ = load_model(tiny_dir)
    with pytest.raises(ModelLoadError, match="does not fit this model"):
        load_adapter(tiny, tmp_path / "small_adapter")
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        load_adapter(tiny, tmp_path)


# config.json of google/gemma-3-4b-it (architecture fields), to show the real layout is accepted.
def test_real_gemma3_4b_layout_is_accepted(tmp_path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    (tmp_path / "config.json").write_text(json.dumps(config_dict("4b")))  # google/gemma-3-4b-it's widths
    for i in (1, 2):
        (tmp_path / f"model-0000{i}-of-00002.safetensors").touch()
    assert check_checkpoint_dir(tmp_path)["model_type"] == "gemma3"
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(Gemma3Config.from_pretrained(tmp_path))
    assert 4.2e9 < sum(p.numel() for p in model.parameters()) < 4.4e9


def test_save_model_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
