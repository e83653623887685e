"""Dense vision pretraining (jobs/pretrain_vision.py) on the tiny preset and the bundled NAIP scenes."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magseg_ray.errors import ConfigError
from magseg_ray.model.checkpoint import load_model
from magseg_ray.model.presets import build_model
from magseg_ray.model.card import read_model_prompt
from magseg_ray.train.vision import SceneSampler, VisionPretrainConfig, _shares, pretrain_vision

ROOT = Path(__file__).resolve().parents[2]


def test_token_targets_are_the_class_shares_of_each_cell():
    classes = np.zeros((8, 8), np.uint8)
    classes[:4, :4] = 1  # top-left cell all field
    classes[4:, 4:6] = 2  # bottom-right cell half boundary
    shares = _shares(classes, 2)
    assert np.allclose(shares[:, 0], [[0, 1, 0], [1, 0, 0], [1, 0, 0], [0.5, 0, 0.5]])


def test_sub_cells_give_each_token_the_classes_of_its_blocks():
    classes = np.random.default_rng(0).integers(0, 3, (8, 8)).astype(np.uint8)
    pixels = _shares(classes, 2, 4)  # 2 x 2 tokens of 4 x 4 pixels: one block per pixel
    assert pixels.shape == (4, 16, 3)
    token = 1  # top-right cell: rows 0-3, columns 4-7
    assert np.array_equal(pixels[token].argmax(1).reshape(4, 4), classes[:4, 4:])
    assert np.allclose(pixels.max(2), 1)  # one-hot
    halves = _shares(classes, 2, 2)  # 2 x 2 blocks of 2 x 2 pixels per token
    assert np.allclose(halves[3, 1], [(classes[4:6, 6:] == k).mean() for k in range(3)])


def _symmetries(a: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(a, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def test_augmented_windows_turn_image_and_classes_together_through_all_eight_symmetries():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    classes = image[..., 0] % 3
    plain, augmented = (SceneSampler([(image, classes)], 64, 16, 16, augment=a) for a in (False, True))
    seen = set()
    for seed in range(64):
        chip, cls, box = plain.window(np.random.default_rng(seed))
        a_chip, a_cls, a_box = augmented.window(np.random.default_rng(seed))
        assert a_box == box and a_chip.flags.c_contiguous
        np.testing.assert_array_equal(a_cls, a_chip[..., 0] % 3)  # still the labels of its own pixels
        matches = [k for k, s in enumerate(_symmetries(chip)) if np.array_equal(s, a_chip)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_pretraining_trains_the_vision_side_only_and_writes_a_base_for_sft(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_job", ROOT / "jobs" / "pretrain_vision.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "base"
    argv = ["--data", str(ROOT / "tests/data/naip"), "--out", str(out), "--base", "tiny", "--steps", "40",
            "--batch-size", "8", "--log-every", "20", "--val-fraction", "0.5", "--crop-scale", "1", "--sub-cells", "2"]
    assert job.main(argv) == 0
    assert "[vision] steps 40/40 100%" in capsys.readouterr().err  # its progress line, as every long job's
    summary = json.loads((out / "vision_pretrain.json").read_text())
    losses = [h["loss"] for h in summary["history"] if "loss" in h]
    assert losses[-1] < losses[0]
    # every validation row reports how often a token tells its own row and column
    assert all(0 <= h["val_position_accuracy"] <= 1 for h in summary["history"])
    assert (out / "vision_pretrain.png").stat().st_size > 5_000
    trained, _ = load_model(out)  # a checkpoint SFT's --base takes, with the prompts it was trained for
    assert read_model_prompt(out).crop_scale == 1.0
    base, _ = build_model("tiny", seed=0)
    reference = base.state_dict()
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, reference[n])}
    assert any("vision_tower" in n for n in changed) and any("multi_modal_projector" in n for n in changed)
    assert not any("language_model" in n for n in changed)  # the decoder is SFT's to train


def test_position_head_teaches_tokens_where_they_are(tmp_path):
    """With the position loss alone, the tiny tower's tokens learn their place in the grid (far above
    the 1 in 16 of chance for its 4 x 4 tokens); without it they do not."""
    data = str(ROOT / "tests/data/naip")
    common = dict(data=data, base="tiny", steps=100, batch_size=8, log_every=100, val_fraction=0.5, lr=3e-3)
    placed = pretrain_vision(VisionPretrainConfig(out=str(tmp_path / "on"), position_weight=5.0, **common))
    unplaced = pretrain_vision(VisionPretrainConfig(out=str(tmp_path / "off"), position_weight=0.0, **common))
    assert placed["final"]["val_position_accuracy"] > 0.5
    assert placed["final"]["val_position_accuracy"] > unplaced["final"]["val_position_accuracy"] + 0.3


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="--data and --out"):
        pretrain_vision(VisionPretrainConfig(base="tiny"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="not empty"):
        pretrain_vision(VisionPretrainConfig(data=str(ROOT / "tests/data/naip"), out=str(taken), base="tiny"))
    assert (taken / "model.safetensors").read_bytes() == b"weights"  # nothing written over
    with pytest.raises(ConfigError, match="position_weight"):
        pretrain_vision(VisionPretrainConfig(data=str(ROOT / "tests/data/naip"), out="y", base="tiny", position_weight=-1))
    with pytest.raises(ConfigError, match="must split"):
        pretrain_vision(VisionPretrainConfig(data=str(ROOT / "tests/data/naip"), out="x", base="tiny", chip_size=250))
