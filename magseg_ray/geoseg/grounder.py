"""Grounding: an image-text-to-text model reads the image and the query and answers a box + phrase.

:class:`Grounder` wraps any transformers image-text-to-text checkpoint whose box convention is
known (:data:`GROUNDERS`): Qwen2.5-VL answers pixels of the image as its processor resized it
(that size comes from ``image_grid_thw``), Qwen3-VL thousandths, Gemma3 thousandths (it has no
grounding training; the prompt asks for them), PaliGemma ``<loc>`` tokens. The prompt comes
from :mod:`.prompts`, the answer goes through :func:`.parsing.parse_answer` (greedy decoding).

Refused before any generation, as :class:`~magseg_ray.errors.QueryError`: an empty query, and
a prompt that with the answer budget does not fit the model's context.

The processor is the folder's own. Qwen-VL processors also hold a video processor, whose import
in transformers 5 wants torchvision (which cannot sit next to the CPU torch); GeoSeg sends only
images, so when that import fails the same processor class is loaded without its video part. A
prompt rendered by the chat template is tokenized as it is (no special tokens added): templates
that write ``{{ bos_token }}`` (Gemma3's) would otherwise start with two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from magseg_ray.errors import ModelLoadError, QueryError
from magseg_ray.geoseg.loading import Placement, load_pretrained, model_type
from magseg_ray.geoseg.parsing import Parsed, parse_answer
from magseg_ray.geoseg.prompts import grounding_prompt

GROUNDERS = {"qwen2_5_vl": "pixels", "qwen3_vl": "norm1000", "qwen3_vl_moe": "norm1000",
             "gemma3": "norm1000", "paligemma": "loc1024"}
"""Accepted ``model_type`` values and the box convention each one answers in."""


def check_query(query: str) -> str:
    """The stripped query; :class:`QueryError` if nothing is left."""
    if not isinstance(query, str) or not query.strip():
        raise QueryError("the query is empty: say what to segment, e.g. 'the largest field'")
    return query.strip()


def load_processor(path, kind: str):
    """The folder's processor; without its video processor when that cannot be imported."""
    import inspect

    from transformers import AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

    where = f"the grounder's processor from {str(path)!r}"
    try:
        return AutoProcessor.from_pretrained(path, local_files_only=True)
    except ImportError as e:
        missing = e
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load {where}: {e}") from e
    name = PROCESSOR_MAPPING_NAMES.get(kind)
    cls = processor_class_from_name(name) if name else None
    hint = (f"cannot load {where}: a package it imports is missing ({str(missing).strip().splitlines()[0]}); "
            f"install torchvision built for this torch ({torch.__version__})")
    if cls is None or "video_processor" not in inspect.signature(cls.__init__).parameters:
        raise ModelLoadError(hint) from missing

    class ImageOnly(cls):  # the same processor, built from an image processor and a tokenizer only
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    try:
        return ImageOnly.from_pretrained(path, local_files_only=True)
    except ImportError as e:
        raise ModelLoadError(hint) from e
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load {where}: {e}") from e


def describe_query(query: str) -> str:
    """How an error names a query: quoted, cut to 40 characters, with its length in words."""
    head = query if len(query) <= 40 else query[:40].rstrip() + "..."
    return f"the query {head!r} ({len(query.split())} words)"


@dataclass
class Grounding:
    """A grounder's answer: the raw text and what it parses to."""

    text: str
    parsed: Parsed


@dataclass
class Grounder:
    """A loaded grounding model."""

    model: object
    processor: object
    kind: str
    max_new_tokens: int = 96
    """Answer token budget (greedy decoding stops earlier at the end-of-turn token)."""
    placement: Placement = Placement()

    @property
    def convention(self) -> str:
        return GROUNDERS[self.kind]

    @classmethod
    def load(cls, path, max_new_tokens: int = 96, placement: Placement = Placement()) -> "Grounder":
        from transformers import AutoModelForImageTextToText

        from magseg_ray.errors import ConfigError

        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        kind = model_type(path, tuple(GROUNDERS), "grounder")
        model = load_pretrained(AutoModelForImageTextToText, path, "grounder", placement)
        return cls(model, load_processor(path, kind), kind, max_new_tokens, placement)

    def _inputs(self, image: Image.Image, query: str) -> dict:
        return self.chat_inputs(image, grounding_prompt(query, self.convention))

    def chat_inputs(self, image: Image.Image, text: str) -> dict:
        """Model inputs of one user turn (the image, then ``text``) in the model's own format, on the
        model's device."""
        return {k: self.placement.put(v) for k, v in self._encode(image, text).items()}

    def _encode(self, image: Image.Image, text: str) -> dict:
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if self.kind == "paligemma":
            return self.processor(text=text, images=image, return_tensors="pt")
        if getattr(tokenizer, "chat_template", None) or getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.processor(text=[prompt], images=[image], return_tensors="pt", add_special_tokens=False)
        # offline presets: the Gemma3 turn format, written out (their tokenizer has no chat template)
        from magseg_ray.model.tokenizer import BOI, BOS, END_OF_TURN, START_OF_TURN

        prompt = f"{BOS}{START_OF_TURN}user\n{BOI}{text}{END_OF_TURN}\n{START_OF_TURN}model\n"
        return self.processor(text=[prompt], images=[[image]], return_tensors="pt", add_special_tokens=False)

    def _seen(self, inputs: dict, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the image as the model saw it (Qwen2.5-VL's box frame)."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return size
        patch = getattr(self.processor.image_processor, "patch_size", 14)
        return int(grid[0, 2]) * patch, int(grid[0, 1]) * patch

    @torch.no_grad()
    def __call__(self, image: np.ndarray, query: str) -> Grounding:
        query = check_query(query)
        pil = Image.fromarray(np.asarray(image, np.uint8))
        inputs = self._inputs(pil, query)
        limit = self.model.config.get_text_config().max_position_embeddings
        n = int(inputs["input_ids"].shape[1])
        if n + self.max_new_tokens > limit:
            raise QueryError(f"{describe_query(query)} is too long for the grounder: its prompt is {n} tokens, plus "
                             f"{self.max_new_tokens} for the answer, over the model's context of {limit}")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        text = tokenizer.decode(out[0, n:].cpu(), skip_special_tokens=True)
        size = (image.shape[1], image.shape[0])
        return Grounding(text, parse_answer(text, self.convention, size, self._seen(inputs, size)))
