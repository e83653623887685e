"""Load a Gemma3 image-text-to-text checkpoint and its processor from a local directory.

The directory is what ``save_pretrained`` writes (and what the hub's ``google/gemma-3-4b-it`` and
``-12b-it`` hold): ``config.json``, safetensors weights (single or sharded with an index), the
tokenizer files and ``processor_config.json``/``preprocessor_config.json``. Nothing is ever
downloaded: a missing file is an error, not a fetch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoProcessor, Gemma3ForConditionalGeneration

from magseg_ray.config import DTYPES
from magseg_ray.errors import ConfigError, ModelLoadError

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
"""The shipped demo model (the ``small`` preset trained by ``jobs/sft.py``; see its README.md):
the default ``--model`` of every job."""

GEMMA3_MODEL_TYPES = ("gemma3",)
"""``model_type`` values accepted in ``config.json`` (the image-text-to-text Gemma3)."""


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The torch dtype ``dtype`` names on ``device`` (``auto`` or None: bfloat16 on a GPU that has it, else float32)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        gpu = torch.device(device).type == "cuda"
        return torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def model_fingerprint(model_dir: str) -> str:
    """A hash of the model's config and weights (first and last MiB and size of each weight file:
    cheap for multi-GB checkpoints, and any retraining changes it)."""
    h = hashlib.sha256()
    root = Path(model_dir)
    for path in sorted([root / "config.json", *root.glob("*.safetensors"), *root.glob("adapter_model.*")]):
        if path.is_file():
            size = path.stat().st_size
            h.update(f"{path.name}:{size}".encode())
            with path.open("rb") as f:
                h.update(f.read(1 << 20))
                f.seek(max(size - (1 << 20), 0))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def check_checkpoint_dir(path: str | Path) -> dict:
    """Validate a checkpoint directory and return its parsed ``config.json``."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist or is not a directory")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model directory {str(path)!r} has no config.json") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {config_file}: {e}") from None
    model_type = config.get("model_type")
    if model_type not in GEMMA3_MODEL_TYPES:
        raise ModelLoadError(
            f"{str(path)!r} holds a {model_type!r} model, not a Gemma3 image-text-to-text model "
            "(config.json model_type must be 'gemma3'; a text-only 'gemma3_text' checkpoint has no vision tower)"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"model directory {str(path)!r} has no weights (*.safetensors)")
    return config


def load_model(
    path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | torch.device = "cpu"
) -> tuple[Gemma3ForConditionalGeneration, object]:
    """Load model and processor from ``path`` onto ``device`` in ``dtype`` (see :func:`resolve_dtype`;
    the demo model is stored in bfloat16 to keep the repository small, and read in float32 on the CPU)."""
    check_checkpoint_dir(path)
    dtype = resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = Gemma3ForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise ModelLoadError(f"cannot load Gemma3 checkpoint from {str(path)!r}: {e}") from e
    return model.to(device).eval(), processor


def save_model(model: Gemma3ForConditionalGeneration, processor, path: str | Path) -> Path:
    """Save model and processor in the hub layout that :func:`load_model` reads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
