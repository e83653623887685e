"""LoRA adapters on the language model's projections (peft), saved in PEFT format.

Base weights stay frozen; only adapters train, and they merge away at inference (0% extra
parameters). Adapters target the decoder's attention and MLP projections only: the vision tower
has layers with the same names, and a regex keeps them out. peft loads through accelerate (pinned
for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from magseg_ray.errors import ModelLoadError


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by ``alpha / r``)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    projections: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Decoder projections that get adapters."""
    train_modules: tuple[str, ...] = field(default_factory=tuple)
    """Modules trained in full and saved with the adapter (e.g. ``multi_modal_projector`` for an
    offline preset whose projector starts random); empty for real Gemma3 checkpoints."""

    def peft_config(self) -> LoraConfig:
        pattern = r".*language_model.*\.(" + "|".join(self.projections) + r")$"
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=pattern,
            modules_to_save=list(self.train_modules) or None,
            bias="none",
        )


def attach_lora(model, settings: LoraSettings = LoraSettings()) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters; only adapter (and ``train_modules``) weights train."""
    return get_peft_model(model, settings.peft_config())


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    """Load a PEFT adapter saved by ``save_pretrained`` onto ``model``."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"{str(adapter_dir)!r} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable, local_files_only=True)
    except (RuntimeError, ValueError, KeyError) as e:  # shape mismatch: adapter from another model
        raise ModelLoadError(f"adapter {str(adapter_dir)!r} does not fit this model: {e}") from e


def trainable_share(model) -> tuple[int, int, float]:
    """``(trainable, total, trainable / total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total, trainable / total
