"""Patch prompts: the MAgSeg patch instruction format.

The model sees one image chip as global context and answers, as mask text (R-RLE or anchored,
see :mod:`magseg_ray.rle`), for one square patch of it. A prompt is laid out so that every patch
of a chip shares a prefix::

    <bos><start_of_turn>user
    [global chip image] INSTRUCTION (chip size, classes and their codes, the answer syntax)
    Patch [local crop image] x X0-X1 y Y0-Y1<end_of_turn>
    <start_of_turn>model
    ANSWER<end_of_turn>

Everything up to and including the instruction is the same for all patches of a chip (the
*prefix*); only the optional local crop and the patch box follow it, so an inference engine encodes
the chip once and reuses its KV cache for every patch. The local crop is a window of
``crop_scale * patch_size`` pixels centred on the patch (zero-padded at chip edges) that shows the
patch at full resolution when the global image is downsampled; it is on by default because
a small vision tower cannot resolve 32 px of a 512 px chip from the global image alone.

Image placeholders are the tokenizer's ``boi_token`` (``<start_of_image>``), which a Gemma3
processor expands into the image's soft tokens, so the same text works for real Gemma3 checkpoints
and the offline presets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magseg_ray.errors import ChipError
from magseg_ray.masks.schemas import BOUNDARY_WIDTH, MAX_BOUNDARY_WIDTH, Schema, get_schema
from magseg_ray.rle import codec_for

BOS, START_OF_TURN, END_OF_TURN = "<bos>", "<start_of_turn>", "<end_of_turn>"
BOI = "<start_of_image>"
PATCH_MARK = "\nPatch"
"""End of the prefix every patch prompt of a chip shares. It ends before the space that follows: a
tokenizer that writes ``" x"`` as one piece (Gemma's) then splits each whole prompt at the prefix,
as shared-prefix decoding and packing need."""
"""Gemma3's chat markup and image placeholder, the same strings in every Gemma3 tokenizer."""

INSTRUCTIONS = ("natural", "short")
"""Instruction styles (see :attr:`PromptConfig.instruction`)."""

Box = tuple[int, int, int, int]
"""A patch box in chip pixel coordinates: ``(x0, y0, x1, y1)``, end-exclusive."""


@dataclass(frozen=True)
class PromptConfig:
    """How patch prompts are built. Training and inference must use the same values."""

    schema: str = "fields3"
    """Label schema the answer is written in (see :mod:`magseg_ray.masks.schemas`)."""
    patch_size: int = 32
    """Side of the square patch the model answers for, in chip pixels."""
    local_crop: bool = True
    """Also show a crop centred on the patch (after the shared prefix)."""
    crop_scale: float = 2.0
    """Side of the local crop as a multiple of ``patch_size`` (>= 1; 2 shows the patch plus half a
    patch of context on each side)."""
    boundary_width: int = BOUNDARY_WIDTH
    """Half-width ``w`` in pixels of the boundary class in training answers (schemas with one, such
    as ``fields3``): a field pixel is boundary when another field lies within ``w`` pixels of it,
    across a gap or not (see :func:`~magseg_ray.masks.schemas.classes_from_instances`). A gap of
    ``g < w`` pixels between two fields becomes a line ``2w - g`` pixels wide (``w - g`` of boundary
    on each side). Field polygons drawn on aerial imagery are often parted by a gap of 2-4 px only,
    which a width of 1 never marks; a width of 6 turns it into a line of about 9 px."""
    instruction: str = "natural"
    """``natural``: the instruction states the chip size, the classes and the answer syntax in words
    (about 100 tokens; what a real Gemma3 reads). ``short``: ``Segment`` and the class codes (5
    tokens), for offline presets that learn the task from scratch and gain nothing from the words
    but pay for every token in every training step."""

    answer_format: str = "rrle"
    """Mask text the answers are written in: ``rrle`` (run lengths, ``N*`` repeats) or ``anchored``
    (each line opens with its first row, runs end at a column); see :mod:`magseg_ray.rle`."""

    def __post_init__(self) -> None:
        get_schema(self.schema)
        codec_for(self.answer_format)
        if not 0 <= self.boundary_width <= MAX_BOUNDARY_WIDTH:
            raise ChipError(f"boundary_width must lie in 0..{MAX_BOUNDARY_WIDTH} (the fields step gives boundary "
                            f"pixels back to their field only that deep), got {self.boundary_width}")
        if self.patch_size < 1:
            raise ChipError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.crop_scale < 1:
            raise ChipError(f"crop_scale must be >= 1, got {self.crop_scale}")
        if self.instruction not in INSTRUCTIONS:
            raise ChipError(f"instruction must be one of {', '.join(INSTRUCTIONS)}, got {self.instruction!r}")

    @property
    def crop_size(self) -> int:
        return int(round(self.patch_size * self.crop_scale))


@dataclass
class PatchPrompt:
    """Model inputs for one patch."""

    images: list[np.ndarray]
    """HxWx3 uint8 images in placeholder order: the chip, then the local crop if configured."""
    text: str
    """Full prompt text, ending where the model's answer starts."""
    prefix: str
    """The part of ``text`` shared by every patch of the chip (it holds the first image only)."""
    box: Box
    """The patch box in chip pixels."""
    target: str | None = None
    """The answer for the patch in the config's format, when labels were given (without the
    end-of-turn marker)."""


ANSWER_SYNTAX = {
    "rrle": "one line per row: runs of class code then length, the last run of a line without length; "
            "N* repeats a line N times, a leading * repeats it to the end.",
    # every word is in the shipped demo model's vocabulary, so it stays one token per word there
    "anchored": "one line per run of row: the leading row then :, then runs of class code then end, "
                "the last run of a line without end.",
}
"""The answer syntax the instruction states, per answer format."""


def instruction(schema: Schema, chip_h: int, chip_w: int, patch_size: int, style: str = "natural",
                answer_format: str = "rrle") -> str:
    """The shared instruction: chip size, classes with their codes, and the answer syntax in words;
    in the ``short`` style only ``Segment`` and the class codes."""
    if style == "short":
        return f"Segment {''.join(schema.codes)}"
    classes = ", ".join(f"{c.code} {c.name}" for c in schema.classes)
    return (
        f"Segment this {chip_w}x{chip_h} image chip into classes {classes}. "
        f"Answer for one {patch_size}x{patch_size} patch, {ANSWER_SYNTAX[answer_format]}"
    )


def single_class(target: str) -> bool:
    """Whether an answer names one class only (a whole-patch answer such as ``*f``), in any answer
    format: its letters, the class codes, are all the same."""
    return len({c for c in target if c.isalpha()}) == 1


def check_chip(chip: np.ndarray) -> np.ndarray:
    """Validate a chip: an HxWx3 uint8 array (scenes convert other band counts and dtypes first)."""
    chip = np.asarray(chip)
    if chip.ndim != 3 or chip.shape[2] != 3:
        raise ChipError(f"chip must be an HxWx3 RGB array, got shape {chip.shape}")
    if chip.dtype != np.uint8:
        raise ChipError(f"chip must be uint8 (scale other dtypes first), got {chip.dtype}")
    if chip.shape[0] == 0 or chip.shape[1] == 0:
        raise ChipError(f"chip is empty: shape {chip.shape}")
    return chip


def patch_boxes(chip_h: int, chip_w: int, patch_size: int = 32) -> list[Box]:
    """Every patch box of a chip in row-major order; the chip sides must be multiples of the patch."""
    if chip_h % patch_size or chip_w % patch_size:
        raise ChipError(f"chip {chip_h}x{chip_w} is not a whole number of {patch_size} px patches")
    return [
        (x, y, x + patch_size, y + patch_size)
        for y in range(0, chip_h, patch_size)
        for x in range(0, chip_w, patch_size)
    ]


def local_crop(chip: np.ndarray, box: Box, size: int) -> np.ndarray:
    """A ``size`` x ``size`` window of ``chip`` centred on ``box``, zero-padded outside the chip."""
    x0, y0, x1, y1 = box
    left, top = x0 - (size - (x1 - x0)) // 2, y0 - (size - (y1 - y0)) // 2
    out = np.zeros((size, size, chip.shape[2]), dtype=chip.dtype)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + size, chip.shape[0]), min(left + size, chip.shape[1])
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = chip[sy0:sy1, sx0:sx1]
    return out


def build_patch_prompt(
    chip: np.ndarray, box: Box, config: PromptConfig = PromptConfig(), labels: np.ndarray | None = None
) -> PatchPrompt:
    """The prompt for one patch of a chip; with ``labels`` (the chip's class mask), also its target.

    ``labels`` must be a class mask of the whole chip under ``config.schema``: derive classes
    at chip level (e.g. :func:`~magseg_ray.masks.schemas.classes_from_instances`) so that field
    boundaries that fall on a patch edge are right.
    """
    chip = check_chip(chip)
    schema = get_schema(config.schema)
    h, w = chip.shape[:2]
    x0, y0, x1, y1 = box
    p = config.patch_size
    if (x1 - x0, y1 - y0) != (p, p):
        raise ChipError(f"patch box {box} is not {p}x{p} (patch_size={p})")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ChipError(f"patch box {box} lies outside the {w}x{h} chip")

    prefix = (f"{BOS}{START_OF_TURN}user\n{BOI}"
              f"{instruction(schema, h, w, p, config.instruction, config.answer_format)}{PATCH_MARK}")
    images = [chip]
    text = prefix + " "
    if config.local_crop:
        images.append(local_crop(chip, box, config.crop_size))
        text += BOI
    text += f"x {x0}-{x1} y {y0}-{y1}{END_OF_TURN}\n{START_OF_TURN}model\n"

    target = None
    if labels is not None:
        labels = schema.check_mask(labels, "chip labels")
        if labels.shape != (h, w):
            raise ChipError(f"chip labels have shape {labels.shape}, the chip is {h}x{w}")
        target = codec_for(config.answer_format).encode(labels[y0:y1, x0:x1], schema)
    return PatchPrompt(images=images, text=text, prefix=prefix, box=box, target=target)


def prompt_corpus() -> list[str]:
    """Texts whose words the project tokenizer must hold as single tokens (all schemas)."""
    from magseg_ray.masks.schemas import SCHEMAS

    texts = [instruction(s, 512, 512, 32, answer_format=f) for s in SCHEMAS.values() for f in ANSWER_SYNTAX]
    return texts + ["Patch x y user model"]
