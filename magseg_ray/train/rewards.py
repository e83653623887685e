"""Rewards of GRPO: a decoded answer mask scored against the patch's true mask.

A reward function takes ``(pred, truth, schema)`` (two ``p x p`` class masks and a
:class:`~magseg_ray.masks.schemas.Schema`) and returns a float in [0, 1]. Built in:

- ``dice``: mean Dice over the classes present in the truth or the answer (the MAgSeg reward);
- ``boundary_f``: mean boundary F-score (2 px tolerance) over the classes present; 1.0 when
  neither mask has any boundary (a uniform patch answered uniformly with the right class), 0.0
  when the classes differ;
- ``instance_iou``: mean IoU of the truth's field instances (fields recovered from the class
  mask); 1.0 when neither mask has a field, 0.0 when only the answer has one.

Any other ``module:function`` importable on the rollout actors is a reward too (pluggable).
:func:`score_answers` runs one over a batch of answers: an answer whose reward raises or is not a
finite number is dropped (reward NaN) and counted, and the rest go on.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import numpy as np

from magseg_ray.errors import ConfigError
from magseg_ray.eval.metrics import instance_metrics, pixel_metrics
from magseg_ray.masks.instances import instances_from_classes
from magseg_ray.masks.schemas import Schema

Reward = Callable[[np.ndarray, np.ndarray, Schema], float]


def dice(pred: np.ndarray, truth: np.ndarray, schema: Schema) -> float:
    """Mean Dice over the classes present in ``truth`` or ``pred``."""
    return pixel_metrics(pred, truth, schema)["mean"]["dice"]


def boundary_f(pred: np.ndarray, truth: np.ndarray, schema: Schema) -> float:
    """Mean boundary F-score over the classes present (see module doc for uniform patches)."""
    value = pixel_metrics(pred, truth, schema)["mean"]["boundary_f"]
    if math.isnan(value):  # no boundary pixel in either mask: both are one class each
        return float(np.array_equal(pred, truth))
    return value


def instance_iou(pred: np.ndarray, truth: np.ndarray, schema: Schema) -> float:
    """Mean IoU of the truth's field instances (see module doc for patches without fields)."""
    result = instance_metrics(instances_from_classes(pred, schema), instances_from_classes(truth, schema))
    if result["n_truth"] == 0:
        return float(result["n_pred"] == 0)
    return result["mean_iou"]


REWARDS: dict[str, Reward] = {"dice": dice, "boundary_f": boundary_f, "instance_iou": instance_iou}


def get_reward(name: str) -> Reward:
    """A built-in reward by name, or ``module:function``."""
    if name in REWARDS:
        return REWARDS[name]
    module, _, attr = name.partition(":")
    if not attr:
        raise ConfigError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)} or module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load reward {name!r}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"reward {name!r} is not callable")
    return fn


def score_answers(reward: Reward, preds: list[np.ndarray], truths: list[np.ndarray],
                  schema: Schema) -> tuple[np.ndarray, list[str]]:
    """Rewards of ``preds`` against ``truths``; a reward that raises or is not finite gives NaN
    (the answer is dropped) and a line in the returned error list."""
    rewards = np.full(len(preds), np.nan)
    errors = []
    for i, (pred, truth) in enumerate(zip(preds, truths)):
        try:
            value = float(reward(pred, truth, schema))
        except Exception as e:  # noqa: BLE001 - a pluggable reward may fail in any way; the answer is dropped
            errors.append(f"answer {i}: reward raised {type(e).__name__}: {e}")
            continue
        if not math.isfinite(value):
            errors.append(f"answer {i}: reward returned {value}")
            continue
        rewards[i] = value
    return rewards, errors
