import numpy as np
import pytest

from pathlib import Path

from magseg_ray.errors import ChipError, ConfigError, SchemaError
from magseg_ray.masks.schemas import classes_from_instances, get_schema
from magseg_ray.prompt import PromptConfig, build_patch_prompt, instruction, local_crop, patch_boxes
from magseg_ray.rle.anchored import decode as decode_anchored
from magseg_ray.rle.codec import decode

RNG = np.random.default_rng(0)
CHIP = RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_patches_of_a_chip_share_the_prefix_and_end_with_their_box():
    boxes = patch_boxes(96, 128)
    assert len(boxes) == 12 and boxes[1] == (32, 0, 64, 32)
    prompts = [build_patch_prompt(CHIP, b) for b in boxes]
    prefix = prompts[0].prefix
    assert all(p.text.startswith(prefix) for p in prompts)
    assert len({p.text for p in prompts}) == len(boxes)
    # the shared part holds the chip image and the instruction; the per-patch part the crop and box
    assert prefix.count("<start_of_image>") == 1 and "128x96" in prefix
    tail = prompts[5].text[len(prefix):]
    assert tail.startswith(" <start_of_image>x 32-64 y 32-64<end_of_turn>")  # the space after "Patch" too
    assert prompts[5].images[0] is CHIP and prompts[5].images[1].shape == (64, 64, 3)


def test_global_image_only():
    p = build_patch_prompt(CHIP, (0, 0, 32, 32), PromptConfig(local_crop=False))
    assert len(p.images) == 1 and p.text.count("<start_of_image>") == 1


def test_local_crop_is_centred_and_zero_padded():
    crop = local_crop(CHIP, (0, 0, 32, 32), 64)
    assert (crop[:16] == 0).all() and (crop[:, :16] == 0).all()
    assert np.array_equal(crop[16:48, 16:48], CHIP[0:32, 0:32])
    assert np.array_equal(local_crop(CHIP, (32, 32, 64, 64), 64), CHIP[16:80, 16:80])


def test_target_is_the_patch_mask_text():
    inst = np.zeros((96, 128), np.uint16)
    inst[:, :40], inst[:, 40:] = 1, 2  # two fields touching at x = 40
    labels = classes_from_instances(inst, "fields3")
    p = build_patch_prompt(CHIP, (32, 0, 64, 32), labels=labels)
    mask, report = decode(p.target, 32, 32, "fields3", strict=True)
    assert report.ok and np.array_equal(mask, labels[0:32, 32:64])
    assert p.target == "*f7e2f"  # boundary derived at chip level, 2 px across the shared edge


def test_anchored_answers_and_their_instruction():
    inst = np.zeros((96, 128), np.uint16)
    inst[:, :40], inst[:, 40:] = 1, 2
    labels = classes_from_instances(inst, "fields3")
    cfg = PromptConfig(answer_format="anchored")
    p = build_patch_prompt(CHIP, (32, 0, 64, 32), cfg, labels=labels)
    assert p.target == "0:f7e9f"  # the R-RLE "*f7e2f", with end columns
    mask, report = decode_anchored(p.target, 32, 32, "fields3", strict=True)
    assert report.ok and np.array_equal(mask, labels[0:32, 32:64])
    assert "leading row then :" in p.prefix and "N*" not in p.prefix
    with pytest.raises(ConfigError, match="unknown answer format 'text4seg'"):
        PromptConfig(answer_format="text4seg")


def test_anchored_instruction_is_one_token_per_word_in_the_demo_vocabulary():
    # the shipped demo model's tokenizer writes the anchored instruction and answers without a new
    # token: a model continued from it can switch format
    from transformers import AutoTokenizer

    demo = Path(__file__).resolve().parents[1] / "magseg_ray" / "assets" / "demo_model"
    tokenizer = AutoTokenizer.from_pretrained(demo)
    text = instruction(get_schema("fields3"), 256, 256, 32, answer_format="anchored")
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert "".join(pieces) == text and tokenizer.unk_token not in pieces
    assert [w for w in text.replace(":", " ").replace(",", " ").replace(".", " ").split() if w.isalpha()
            and len(w) > 1] == [p for p in pieces if p.isalpha() and len(p) > 1]  # no word spelled in letters
    answer = tokenizer.convert_ids_to_tokens(tokenizer("0:f20e22b\n12:b\n31:e", add_special_tokens=False)["input_ids"])
    assert answer == ["0", ":", "f", "20", "e", "22", "b", "\n", "12", ":", "b", "\n", "31", ":", "e"]


def test_patch_size_and_schema_are_parameters():
    cfg = PromptConfig(schema="alu", patch_size=16, crop_scale=3)
    labels = RNG.integers(0, 6, (96, 128)).astype(np.uint8)
    p = build_patch_prompt(CHIP, (16, 16, 32, 32), cfg, labels=labels)
    assert p.images[1].shape == (48, 48, 3) and "w well" in p.prefix and "16x16 patch" in p.prefix
    assert np.array_equal(decode(p.target, 16, 16, "alu", strict=True)[0], labels[16:32, 16:32])


@pytest.mark.parametrize(
    "chip, box, match",
    [
        (CHIP.astype(np.uint16), (0, 0, 32, 32), "must be uint8"),
        (CHIP[..., :2], (0, 0, 32, 32), "HxWx3"),
        (CHIP[..., 0], (0, 0, 32, 32), "HxWx3"),
        (CHIP, (112, 0, 144, 32), "outside the 128x96 chip"),
        (CHIP, (-1, 0, 31, 32), "outside"),
        (CHIP, (0, 0, 16, 16), "is not 32x32"),
    ],
)
def test_bad_chips_and_boxes(chip, box, match):
    with pytest.raises(ChipError, match=match):
        build_patch_prompt(chip, box)


def test_bad_labels_and_config():
    with pytest.raises(SchemaError, match="do not fit schema"):
        build_patch_prompt(CHIP, (0, 0, 32, 32), labels=np.full((96, 128), 7, np.uint8))
    with pytest.raises(ChipError, match="labels have shape"):
        build_patch_prompt(CHIP, (0, 0, 32, 32), labels=np.zeros((32, 32), np.uint8))
    with pytest.raises(ChipError, match="not a whole number"):
        patch_boxes(100, 128)
    with pytest.raises(SchemaError, match="unknown label schema"):
        PromptConfig(schema="nope")
    for width in (-1, 7):
        with pytest.raises(ChipError, match=f"boundary_width must lie in 0..6 .*, got {width}"):
            PromptConfig(boundary_width=width)



def test_single_class_answers_are_told_apart_from_structured_ones():
    from magseg_ray.prompt import single_class

    assert single_class("*f") and single_class("*b") and single_class("0:f")
    assert not single_class("*f14b4f") and not single_class("2*f20e2b\n*b") and not single_class("0:f20e22b\n12:b")
