"""Load a GeoSeg component (grounder, CLIP, SAM) from a local checkpoint folder, never the hub.

Every folder is what ``save_pretrained`` writes (a hub folder as downloaded). The folder's
``config.json`` ``model_type`` must be one the component accepts, so a SAM folder given as
``--clip`` is refused with a clear :class:`~magseg_ray.errors.ModelLoadError` before any weight is
read; a folder that lacks weights the model needs is refused too (transformers would fill them
with random values). Every model loads in eval mode on one :class:`Placement` (device and
dtype: bfloat16 on a GPU, float32 on the CPU unless asked). The image settings a checkpoint was
trained with (``preprocessor_config.json``: size, mean, std) are read here too, for the
components whose pre-processing this package writes itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from magseg_ray.errors import ConfigError, ModelLoadError

@dataclass(frozen=True)
class Placement:
    """Where GeoSeg's models run: a torch device and a parameter dtype."""

    device: str = "cpu"
    """torch device string: cpu, cuda, cuda:1, ..."""
    dtype: str = "float32"
    """float32, bfloat16 or float16."""

    @classmethod
    def resolve(cls, device: str | None = None, dtype: str | None = None) -> "Placement":
        """The placement asked for; by default the GPU when there is one, and ``dtype`` as every job's
        ``--dtype`` (:func:`~magseg_ray.model.checkpoint.resolve_dtype`). :class:`ConfigError` for an
        unknown dtype or device, or a GPU that is not there."""
        import torch

        from magseg_ray.model.checkpoint import resolve_dtype

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError):
            raise ConfigError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: no CUDA GPU is visible to torch here")
        return cls(device, str(resolve_dtype(dtype, kind)).removeprefix("torch."))

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def put(self, tensor):
        """``tensor`` on the device; floating tensors in the dtype too (model inputs)."""
        return tensor.to(self.device, self.torch_dtype) if tensor.is_floating_point() else tensor.to(self.device)


def model_type(path: str | Path, accepted: tuple[str, ...], what: str) -> str:
    """The folder's ``model_type``; raises :class:`ModelLoadError` unless it is one of ``accepted``."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{what} folder {str(path)!r} has no config.json (not a checkpoint folder)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {e}") from None
    kind = config.get("model_type")
    if kind not in accepted:
        raise ModelLoadError(f"{str(path)!r} holds a {kind!r} model; the {what} must be one of: {', '.join(accepted)}")
    return kind


def load_pretrained(cls, path: str | Path, what: str, placement: Placement = Placement()):
    """``cls.from_pretrained(path)`` offline, eval mode, on ``placement``; errors, and weights the
    model needs that the folder lacks, as :class:`ModelLoadError`."""
    try:
        model, info = cls.from_pretrained(path, local_files_only=True, dtype=placement.torch_dtype,
                                          output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load the {what} from {str(path)!r}: {e}") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelLoadError(f"the {what} folder {str(path)!r} lacks {len(missing)} weights a {cls.__name__} needs "
                             f"(e.g. {', '.join(missing[:3])}): not a complete checkpoint of that model")
    return model.to(placement.device).eval()


def load_tokenizer(path: str | Path, what: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load the {what}'s tokenizer from {str(path)!r}: {e}") from e


@dataclass(frozen=True)
class ImageSettings:
    """How a checkpoint wants its images: resized to ``size`` (height, width), then (x/255 - mean) / std."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def image_settings(path: str | Path, default_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> ImageSettings:
    """The folder's ``preprocessor_config.json`` settings (``size`` as height/width, longest_edge,
    shortest_edge or one integer), with the given defaults for whatever it does not say."""
    file = Path(path) / "preprocessor_config.json"
    values = {}
    if file.is_file():
        try:
            values = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot read {file}: {e}") from None
    size = values.get("size") or {}
    if isinstance(size, (int, float)):  # older folders (openai/clip-*): "size": 224
        size = {"shortest_edge": size}
    if "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    else:
        side = int(size.get("longest_edge") or size.get("shortest_edge") or default_size)
        hw = (side, side)
    return ImageSettings(hw, tuple(values.get("image_mean") or mean), tuple(values.get("image_std") or std))


def to_pixels(image, settings: ImageSettings):
    """``H x W x 3`` uint8 -> ``1 x 3 x h x w`` float tensor at the settings' size (bilinear)."""
    import numpy as np
    import torch
    from PIL import Image

    h, w = settings.size
    resized = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((w, h), Image.BILINEAR), np.float32)
    x = (resized / 255.0 - np.asarray(settings.mean, np.float32)) / np.asarray(settings.std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()
