"""Choose a model's ``boundary_bias`` on training scenes, and write it into its card.

A decoder that writes the most likely class at every choice under-draws a rare one: on the
naip-fields training windows about 5 % of pixels are boundary at width 6, and a greedy model that
has learnt boundaries may still write none, so neighbouring fields merge into one. The model card's
``boundary_bias`` multiplies the probability of starting a boundary run in kind-first greedy
decoding (:meth:`~magseg_ray.rle.constrained.RLELogitsProcessor.by_kind`).

:func:`calibrate_boundary` answers ``patches`` random patch windows of the **training** scenes of a
packed folder (never the validation scenes) once per bias of a grid, and picks the largest bias whose
share of boundary pixels stays within the truth's (the smallest bias if every one draws more). The
two errors are not alike: the fields step grows fields from cores (the card's ``field_seed_px``), so
a boundary with gaps still separates fields, but a boundary drawn where there is none cuts a field
in two; past the truth's share a larger bias adds mostly such lines (at 100, a 1 px boundary run
opening most rows of a patch). It is a rule about prevalence, not a search for the best held-out
score, so the held-out evaluation stays held out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from magseg_ray.errors import ConfigError

GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
"""Biases tried by default."""


def calibrate_boundary(model_dir: str | Path, packed: str | Path, patches: int = 192, biases=GRID,
                       seed: int = 7) -> dict:
    """Pick and write ``model_dir``'s ``boundary_bias`` (see module doc); returns what was measured."""
    from magseg_ray.masks.schemas import get_schema
    from magseg_ray.model.card import read_model_prompt, write_model_prompt
    from magseg_ray.model.checkpoint import load_model
    from magseg_ray.model.generate import GenerationSettings, answer_patches
    from magseg_ray.prompt import build_patch_prompt
    from magseg_ray.train.demo_data import unpack_scenes
    from magseg_ray.train.vision import SceneSampler

    card = read_model_prompt(model_dir)
    if card is None:
        raise ConfigError(f"{model_dir}: no magseg.json; calibrate a model this project trained")
    if patches < 1 or not biases or min(biases) <= 0:
        raise ConfigError(f"patches must be >= 1 and biases > 0, got {patches} and {list(biases)}")
    config, boundary = card.prompt(), get_schema(card.schema).boundary_class
    sampler = SceneSampler(unpack_scenes(packed, card.boundary_width)["train"], card.chip_size, config.patch_size,
                           config.crop_size)
    rng = np.random.default_rng(seed)
    prompts, truth = [], []
    for _ in range(patches):
        chip, classes, (x0, y0, x1, y1) = sampler.window(rng)
        prompts.append(build_patch_prompt(chip, (x0, y0, x1, y1), config))
        truth.append(float((classes[y0:y1, x0:x1] == boundary).mean()))
    model, processor = load_model(model_dir)
    model.eval()
    shares = []
    for bias in biases:
        answers = answer_patches(model, processor, prompts, config, GenerationSettings(batch_size=32, boundary_bias=bias))
        shares.append(float(np.mean([(a.mask == boundary).mean() for a in answers])))
    target = float(np.mean(truth))
    within = [b for b, s in zip(biases, shares) if s <= target]
    chosen = float(max(within) if within else min(biases))
    write_model_prompt(model_dir, replace(card, boundary_bias=chosen))
    return {"model": str(model_dir), "truth_share": target, "biases": list(biases), "shares": shares,
            "boundary_bias": chosen, "patches": patches}
