"""GRPO rollouts on Ray actors: sample G answers per patch prompt, decode them, score them.

Each :class:`RolloutActor` holds the policy's base model (the ``--model`` checkpoint, with an
optional SFT adapter merged in) plus a LoRA adapter of the same shape as the learner's. Only the
LoRA weights travel: the learner puts them in the object store once per update and passes the
reference, tagged with the policy version, with every request; an actor whose weights are of
another version loads them before it samples (so a restarted actor heals itself), and every
result says which version produced it, so the learner records the lag instead of trusting it.

Prompts do not travel either: every actor and learner holds the training chips (one object in
the store) as a :class:`PromptSet` and a prompt is named by its key ``(chip index, patch index)``.
:class:`RolloutPool` spreads one step's prompts over the actors and merges their groups.

Ray is imported where it is used, so that a driver can check its inputs with this module before
:func:`magseg_ray.cluster.ray_session` sets Ray's environment up (Ray reads it at import).
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from magseg_ray.model.lora import LoraSettings
from magseg_ray.prompt import PromptConfig

Key = tuple[int, int]
"""A training prompt: (index of its chip in the prompt set, index of the patch in the chip)."""


def load_policy_base(model_dir: str | Path, adapter: str | Path | None = None, dtype: str = "auto",
                     device: str = "cpu"):
    """The frozen base of the GRPO policy (and its reference): the checkpoint at ``model_dir``, with
    the PEFT ``adapter`` merged in when given. Raises ``ModelLoadError`` for an adapter that does
    not fit the model. ``dtype`` (``--dtype``) is resolved for ``device``, where the model goes next."""
    from magseg_ray.model.checkpoint import load_model, resolve_dtype
    from magseg_ray.model.lora import load_adapter

    model, processor = load_model(model_dir, resolve_dtype(dtype, device))
    if adapter:
        model = load_adapter(model, adapter).merge_and_unload()
    return model, processor


class PromptSet:
    """Patch prompts of labelled chip records (see :func:`magseg_ray.chips.pipeline.patch_records`),
    addressed by :data:`Key`."""

    def __init__(self, chips: list[dict], prompt: PromptConfig):
        self.chips = chips
        self.prompt = prompt
        self._records = lru_cache(maxsize=4)(self._expand)

    def _expand(self, chip: int) -> list[dict]:
        from magseg_ray.chips.pipeline import patch_records

        return patch_records(self.chips[chip], self.prompt)

    def keys(self) -> list[Key]:
        """Every prompt of the set, chip by chip."""
        return [(i, j) for i in range(len(self.chips)) for j in range(len(self._expand(i)))]

    def record(self, key: Key) -> dict:
        return self._records(int(key[0]))[int(key[1])]


def sample_groups(model, processor, prompts: PromptSet, keys: list[Key], records: list[dict], group_size: int,
                  settings, generator=None) -> list:
    """``group_size`` answers (:class:`~magseg_ray.model.generate.PatchAnswer`) for each prompt of
    ``keys`` (whose records are ``records``), group after group in the order of ``keys``, decoded
    with prefix reuse (:func:`~magseg_ray.model.batching.answer_chips`): each chip and the
    instruction go through the model once for all its prompts and their answers. ``settings`` is a
    :class:`~magseg_ray.model.generate.GenerationSettings`; ``generator`` seeds sampling."""
    from magseg_ray.chips.pipeline import chip_image
    from magseg_ray.model.batching import answer_chips

    by_chip: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_chip.setdefault(int(key[0]), []).append(i)
    chips = [(chip_image(prompts.chips[c]), [records[i]["box"] for i in idx for _ in range(group_size)])
             for c, idx in by_chip.items()]
    per_chip = answer_chips(model, processor, chips, prompts.prompt, settings, generator)
    answers = [None] * (len(keys) * group_size)
    for idx, chip_answers in zip(by_chip.values(), per_chip):
        for n, i in enumerate(idx):
            answers[i * group_size : (i + 1) * group_size] = chip_answers[n * group_size : (n + 1) * group_size]
    return answers


class RolloutActor:
    """Policy copy for sampling and evaluation (run as a Ray actor; see module doc)."""

    def __init__(self, model_dir: str, adapter: str | None, lora: LoraSettings, prompt: PromptConfig,
                 reward: str, train_chips: list[dict], val_records: list[dict], seed: int = 0,
                 max_new_tokens: int | None = None, batch_size: int = 16, boundary_bias: float = 1.0,
                 dtype: str = "auto"):
        import ray
        import torch

        from magseg_ray.masks.schemas import get_schema
        from magseg_ray.model.lora import attach_lora
        from magseg_ray.train.rewards import get_reward

        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        model, self.processor = load_policy_base(model_dir, adapter, dtype, device)
        torch.manual_seed(seed)
        self.model = attach_lora(model, lora).to(device).eval()
        self.prompt, self.schema = prompt, get_schema(prompt.schema)
        self.reward = get_reward(reward)
        self.train = PromptSet(train_chips, prompt)
        self.val = val_records
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.boundary_bias = boundary_bias  # validation decodes as the maps do (the model card's)
        self.version = -1  # no weights from the learner yet
        self.loads = 0

    def _sync(self, version: int, weights: list) -> None:
        """Load the LoRA weights of ``version`` (``weights``: [object ref]) unless already held."""
        import ray
        from peft import set_peft_model_state_dict

        if version != self.version:
            set_peft_model_state_dict(self.model, ray.get(weights[0]))
            self.version, self.loads = version, self.loads + 1

    def rollout(self, keys: list[Key], version: int, weights: list, group_size: int, temperature: float,
                seed: int) -> dict:
        """``group_size`` answers for each prompt of ``keys``, decoded and scored (see
        :func:`magseg_ray.train.rewards.score_answers`); temperature 0 answers greedily. Answers
        are decoded with prefix reuse (:func:`sample_groups`)."""
        import torch

        from magseg_ray.model.generate import GenerationSettings
        from magseg_ray.rle import codec_for
        from magseg_ray.train.rewards import dice, score_answers

        t0 = time.perf_counter()
        self._sync(version, weights)
        records = [self.train.record(k) for k in keys]
        device = next(self.model.parameters()).device
        settings = GenerationSettings(self.batch_size, temperature, self.max_new_tokens)
        answers = sample_groups(self.model, self.processor, self.train, keys, records, group_size, settings,
                                torch.Generator(device).manual_seed(seed))
        p = self.prompt.patch_size
        decode = codec_for(self.prompt.answer_format).decode
        truths = [decode(r["target"], p, p, self.schema, strict=True)[0] for r in records for _ in range(group_size)]
        masks = [a.mask for a in answers]
        rewards, errors = score_answers(self.reward, masks, truths, self.schema)
        dices = rewards if self.reward is dice else [dice(m, t, self.schema) for m, t in zip(masks, truths)]
        groups = []
        for i, key in enumerate(keys):
            part = slice(i * group_size, (i + 1) * group_size)
            groups.append({"key": tuple(int(k) for k in key), "texts": [a.text for a in answers[part]],
                           "rewards": [float(r) for r in rewards[part]], "dice": [float(d) for d in dices[part]]})
        return {"version": self.version, "groups": groups, "errors": errors, "seconds": time.perf_counter() - t0}

    def evaluate(self, version: int, weights: list) -> dict:
        """Greedy answers for the validation records, scored (val_dice, val_field_iou): kind-first
        with the model card's ``boundary_bias``, as every map of the policy is decoded."""
        from magseg_ray.model.generate import GenerationSettings
        from magseg_ray.train.sft import score_patches

        self._sync(version, weights)
        settings = GenerationSettings(self.batch_size, 0.0, self.max_new_tokens, boundary_bias=self.boundary_bias)
        return {**score_patches(self.model, self.processor, self.val, self.prompt, settings), "version": self.version}


class RolloutPool:
    """Rollout actors used together: one step's prompts split in contiguous shares."""

    def __init__(self, actors: list):
        self.actors = actors

    @classmethod
    def start(cls, n: int, num_cpus: float, num_gpus: float = 0.0, **actor_args) -> RolloutPool:
        """``n`` actors of :class:`RolloutActor`; an actor that dies is restarted once and its
        request retried (it reloads the requested weights version by itself)."""
        import ray

        remote = ray.remote(RolloutActor).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=1,
                                                  max_task_retries=1)
        return cls([remote.remote(**actor_args) for _ in range(n)])

    def rollout(self, keys: list[Key], version: int, weights, group_size: int, temperature: float,
                seed: int) -> dict:
        """Groups for ``keys`` (in order), the versions that made them, dropped answers and speed."""
        import ray

        t0 = time.perf_counter()
        shares = [s for s in np.array_split(np.arange(len(keys)), len(self.actors)) if len(s)]
        refs = [actor.rollout.remote([keys[i] for i in share], version, [weights], group_size, temperature,
                                     seed * 1009 + n)
                for n, (actor, share) in enumerate(zip(self.actors, shares))]
        outs = ray.get(refs)
        groups = [g for out in outs for g in out["groups"]]
        seconds = time.perf_counter() - t0
        return {"groups": groups, "versions": [out["version"] for out in outs],
                "errors": [e for out in outs for e in out["errors"]],
                "answers_per_s": len(groups) * group_size / seconds, "seconds": seconds}

    def evaluate(self, version: int, weights) -> dict:
        """The validation score of the policy at ``version`` (on the first actor)."""
        import ray

        return ray.get(self.actors[0].evaluate.remote(version, [weights]))

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
