"""GRPO on Ray: LoRA-only weight sync against a full weight sync, and rollout answers/s with 1 and 2 actors.

    python benchmarks/grpo.py [--model small] [--prompts 4] [--group-size 4] [--max-new-tokens 64] [--repeat 3]

Weight sync, per step as ``jobs/grpo.py`` does it: the learner's policy (the model with a LoRA of
rank 16) puts its weights in the object store and a Ray actor holding the same model loads them.
``lora`` sends the adapter weights only (``get_peft_model_state_dict`` -> ``set_peft_model_state_dict``,
what the job sends); the named baseline, ``full_weight_sync``, sends the whole state dict
(``state_dict`` -> ``load_state_dict``), what a policy without LoRA would have to send. Bytes are
tensor bytes; milliseconds run from the learner's ``ray.put`` to the actor's load returning (median of
``--repeat``). Rollouts: ``--prompts`` patch prompts of the repo's naip sample, ``--group-size``
sampled answers each (temperature 1, constrained, decoded and scored by Dice) through a
:class:`~magseg_ray.train.rollout.RolloutPool` of 1, then 2 actors (0.5 CPU each, local Ray with 2
CPUs; the first rollout, which loads the weights, is not timed). Decoding alone, in one Ray task
(:func:`decode_rates`): the same prompts and G sampled answers through ``generate`` on whole
prompts (the second named baseline, ``generate_rollout``) and through prefix reuse, the rollouts'
decoder; ``decode_ratio`` is the second's answers/s over the first's. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from magseg_ray.chips.pipeline import training_chips
from magseg_ray.chips.windows import ChipConfig
from magseg_ray.cluster import RaySettings, ray_session
from magseg_ray.model.checkpoint import save_model
from magseg_ray.model.lora import LoraSettings, attach_lora
from magseg_ray.model.presets import PRESETS, build_model
from magseg_ray.prompt import PromptConfig
from magseg_ray.scenes.catalog import load_catalog
from magseg_ray.train.rollout import PromptSet, RolloutPool, load_policy_base, sample_groups

ROOT = Path(__file__).resolve().parents[1]
LORA = LoraSettings(dropout=0.0)
# Ray is imported where it is used: ray_session sets Ray's environment up first (Ray reads it at import).


class SyncTarget:
    """An actor holding the policy, loading either the LoRA weights or every weight."""

    def __init__(self, model_dir: str):
        model, _ = load_policy_base(model_dir)
        self.model = attach_lora(model, LORA)

    def load_lora(self, weights: list) -> int:
        import ray
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, ray.get(weights[0]))
        return 0

    def load_full(self, weights: list) -> int:
        import ray

        self.model.load_state_dict(ray.get(weights[0]))
        return 0


def time_sync(target, method: str, state: dict, repeat: int) -> float:
    """Median milliseconds of put + remote load of ``state``."""
    import ray

    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        ref = ray.put(state)
        ray.get(getattr(target, method).remote([ref]))
        times.append((time.perf_counter() - t0) * 1000)
        del ref
    return statistics.median(times[1:])  # the first call also waits for the actor to start


def rollout_rate(n_actors: int, model_dir: str, chips_ref, keys, weights, args) -> float:
    """Answers per second of ``n_actors`` rollout actors over ``args.repeat`` rollouts."""
    pool = RolloutPool.start(n_actors, 0.5, model_dir=model_dir, adapter=None, lora=LORA, prompt=PromptConfig(),
                             reward="dice", train_chips=chips_ref, val_records=[],
                             max_new_tokens=args.max_new_tokens)
    try:
        pool.rollout(keys, 0, weights, args.group_size, 1.0, seed=0)  # load the weights, warm up
        t0 = time.perf_counter()
        for i in range(args.repeat):
            pool.rollout(keys, 0, weights, args.group_size, 1.0, seed=i + 1)
        return args.repeat * len(keys) * args.group_size / (time.perf_counter() - t0)
    finally:
        pool.shutdown()


def decode_rates(model_dir: str, chips: list, keys, args) -> tuple[float, float]:
    """Answers per second of one rollout's sampling, in one Ray task (2 CPUs): every prompt whole
    through ``generate`` G times (``answer_patches``, what rollouts ran until 2026-12-01, the named
    baseline ``generate_rollout``), then with prefix reuse (``sample_groups``, what they run now: each
    chip and the instruction once for all its prompts and their G answers). Best of ``args.repeat``."""
    import torch

    from magseg_ray.model.generate import GenerationSettings, answer_patches
    from magseg_ray.prompt import PatchPrompt

    model, processor = load_policy_base(model_dir)
    prompts, g = PromptSet(chips, PromptConfig()), args.group_size
    records = [prompts.record(k) for k in keys]
    whole = [PatchPrompt(list(r["images"]), r["prompt"], "", tuple(r["box"])) for r in records for _ in range(g)]
    settings = GenerationSettings(16, 1.0, args.max_new_tokens)
    rates = []
    for run in (lambda: answer_patches(model, processor, whole, prompts.prompt, settings),
                lambda: sample_groups(model, processor, prompts, keys, records, g, settings,
                                      torch.Generator().manual_seed(0))):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        rates.append(len(whole) / min(times))
    return rates[0], rates[1]


def main(argv=None) -> dict:
    from peft import get_peft_model_state_dict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small", help="preset (tiny, small) or checkpoint folder (default small)")
    p.add_argument("--prompts", type=int, default=4, help="patch prompts per rollout (default 4)")
    p.add_argument("--group-size", type=int, default=4, help="answers per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer token budget (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="timed syncs and rollouts (default 3)")
    args = p.parse_args(argv)
    data = str(ROOT / "tests" / "data" / "naip")
    # stdout carries the one JSON line: what libraries print on the way (DeepSpeed's accelerator line) goes to stderr
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp, ray_session(RaySettings(num_cpus=2)):
        model_dir = args.model
        if args.model in PRESETS:
            model_dir = str(save_model(*build_model(args.model), Path(tmp) / "model"))
        import ray

        learner, _ = load_policy_base(model_dir)
        learner = attach_lora(learner, LORA)
        lora_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(learner).items()}
        full_state = {k: v.detach() for k, v in learner.state_dict().items()}
        target = ray.remote(SyncTarget).options(num_cpus=0.5).remote(model_dir)
        lora_ms = time_sync(target, "load_lora", lora_state, args.repeat)
        full_ms = time_sync(target, "load_full", full_state, args.repeat)
        ray.kill(target)

        chips = [c for c in training_chips(load_catalog(data).scenes, None, ChipConfig(256, 0), PromptConfig(),
                                           val_fraction=0.0).take(2) if c["error"] is None]
        keys = PromptSet(chips, PromptConfig()).keys()[:: 16][: args.prompts]
        chips_ref, weights = ray.put(chips), ray.put(lora_state)
        rates = [rollout_rate(n, model_dir, chips_ref, keys, weights, args) for n in (1, 2)]
        task = ray.remote(decode_rates).options(num_cpus=2)
        generate_rate, reuse_rate = ray.get(task.remote(model_dir, chips_ref, keys, args))
    lora_bytes = sum(t.numel() * t.element_size() for t in lora_state.values())
    full_bytes = sum(t.numel() * t.element_size() for t in full_state.values())
    result = {"benchmark": "grpo", "baseline": "full_weight_sync", "model": args.model, "lora_r": LORA.r,
              "lora_sync_bytes": lora_bytes, "full_sync_bytes": full_bytes,
              "bytes_ratio": round(full_bytes / lora_bytes, 1), "lora_sync_ms": round(lora_ms, 2),
              "full_sync_ms": round(full_ms, 2), "ms_ratio": round(full_ms / lora_ms, 2),
              "prompts": len(keys), "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
              "rollout_answers_per_s_1_actor": round(rates[0], 2), "rollout_answers_per_s_2_actors": round(rates[1], 2),
              "actor_scaling": round(rates[1] / rates[0], 2), "decode_baseline": "generate_rollout",
              "generate_rollout_answers_per_s": round(generate_rate, 2),
              "prefix_reuse_answers_per_s": round(reuse_rate, 2), "decode_ratio": round(reuse_rate / generate_rate, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
