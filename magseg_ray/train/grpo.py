"""GRPO post-training on Ray: rollout actors sample and score masks, Ray Train learners update LoRA.

Roles (one process kind each):

- the driver (:func:`run_grpo`) checks the inputs, reads the training chips (the prompt pool) and
  the held-out validation patches once, starts the rollout actors
  (:class:`magseg_ray.train.rollout.RolloutPool`) and a ``TorchTrainer``;
- rollout actors hold the base model and a LoRA copy; for each patch prompt they sample
  ``group_size`` answers under the grammar of the model card's answer format (every answer
  decodes), decode them and score each against the truth (:mod:`magseg_ray.train.rewards`;
  default: mean Dice over the classes present in truth or answer);
- learners (:func:`learner_loop`, Ray Train workers with DeepSpeed) attach a fresh LoRA to the
  ``--model`` checkpoint, so the policy starts equal to it (LoRA's B is zero), and the frozen
  reference policy is the same model with the adapter disabled (peft ``disable_adapter()``): no
  second copy. After every update rank 0 puts the LoRA weights (only those) in the object store,
  tagged with the policy version (= updates applied), and passes them with the next requests.

One step: rank 0 takes the step's ``prompts_per_step`` prompts (a seeded shuffle of the pool, a
pure function of the step, so a resumed run asks the same), has the actors roll them out with
the current version, and broadcasts the groups; each learner takes every ``world``-th group and
computes, per answer, the group-normalised advantage ``(r - mean) / (std + eps)`` (sample std;
``dr_grpo`` skips the division), then ``updates_per_rollout`` optimizer steps on

    per token:  -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A) + beta * KL
    ratio = pi / pi_old,   KL = pi_ref / pi - log(pi_ref / pi) - 1   (the k3 estimator)

with log-probabilities of the answer tokens at the sampling temperature (the grammar's mask is
not applied: ratios and KL are of the model's own distribution). ``pi_old`` is the policy that
sampled (its log-probs are the first update's, detached), so the clip acts from the second update
on. Answers are re-tokenized canonically for the loss (:func:`magseg_ray.train.batches.collate`).
A dropped answer (reward raised or was not finite) takes no part; a group with fewer than two
scored answers has advantage 0. A flat group (every scored answer rewarded the same: most often
a one-class patch answered ``*f`` G times) is left out of the update, as in DAPO: its policy
gradient is zero, so it would only cost a forward and backward pass for its KL term.

Loss aggregation: token-mean (every answer token of the learner's batch weighs the same;
``loss_aggregation=sequence`` averages per answer first, as the original GRPO). Mask answers vary
a lot in length (``*b`` for an empty patch, hundreds of tokens for many small fields); under a
sequence-mean a token of a short answer weighs far more than one of a long answer, which biases
the policy towards short (blocky) masks when rewarded and spares long wrong masks when punished
(the length bias Dr.GRPO and DAPO point out). Token-mean has no such bias.

Every step the learner records the lag (its version minus the version each actor reports having
sampled with; 0 on this synchronous schedule, checked rather than assumed). Checkpoints and resume
work as in :mod:`magseg_ray.train.sft`; the start policy (version 0) and every ``eval_every``-th
are scored on the same validation patches (greedy, kind-first with the model card's
``boundary_bias``, as maps are decoded). Outputs under ``storage/run_name``:
``adapter/`` (the GRPO LoRA, PEFT), ``model/`` (the policy merged into a plain checkpoint),
``metrics.json`` (start, final and gain on validation, history) and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from dataclasses import dataclass, field

import numpy as np

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.files import local_absolute
from magseg_ray.model.checkpoint import DEMO_MODEL
from magseg_ray.progress import Progress, read_progress, write_progress
from magseg_ray.train.driver import PROGRESS_FILE, RunConfig, chip_splits, run_name_field, save_outputs, write_summary

@dataclass(frozen=True)
class GRPOConfig(RunConfig):
    """Settings of one GRPO run (and those of every run, :class:`~magseg_ray.train.driver.RunConfig`)."""

    run_name: str = run_name_field("grpo")
    model: str = field(default=str(DEMO_MODEL), metadata=doc(
        "starting policy: a Gemma3 checkpoint folder (e.g. an SFT run's model/)"))
    adapter: str = field(default="", metadata=doc(
        "optional PEFT adapter (an SFT run's adapter/) merged into --model first"))
    schema: str | None = field(default=None, metadata=doc(
        "label schema of the answers (default: the model's magseg.json, as for the next three)",
        choices=["fields3", "ai4sf"]))
    patch_size: int | None = field(default=None, metadata=doc("patch side in pixels"))
    local_crop: bool | None = field(default=None, metadata=doc("show a crop around the patch after the shared prefix"))
    crop_scale: float | None = field(default=None, metadata=doc("side of the local crop as a multiple of the patch side"))
    val_patches: int = field(default=32, metadata=doc(
        "validation patches scored at the start, every eval_every steps and at the end"))
    train_chips: int = field(default=64, metadata=doc("training chips read; their patches are the prompt pool"))
    reward: str = field(default="dice", metadata=doc(
        "reward of an answer: dice, boundary_f, instance_iou or module:function"))
    group_size: int = field(default=4, metadata=doc("answers sampled per prompt (G >= 2)"))
    prompts_per_step: int = field(default=8, metadata=doc("patch prompts per step (over all learners)"))
    temperature: float = field(default=1.0, metadata=doc("sampling temperature of rollouts (> 0)"))
    max_new_tokens: int = field(default=160, metadata=doc(
        "answer token budget of rollouts and validation (the grammar closes every mask within it)"))
    updates_per_rollout: int = field(default=1, metadata=doc("optimizer steps on each rollout batch (GRPO's mu)"))
    clip_eps: float = field(default=0.2, metadata=doc("ratio clip below 1 (and above 1 unless clip_eps_high)"))
    clip_eps_high: float = field(default=0.0, metadata=doc("ratio clip above 1 (0: clip_eps; e.g. 0.28 asymmetric)"))
    beta: float = field(default=0.04, metadata=doc("KL penalty coefficient (k3 estimator, to the reference policy)"))
    dr_grpo: bool = field(default=False, metadata=doc("Dr.GRPO advantages: r - mean, no division by the group std"))
    adv_eps: float = field(default=1e-4, metadata=doc("added to the group std before dividing"))
    loss_aggregation: str = field(default="token", metadata=doc(
        "token: mean over all answer tokens; sequence: mean per answer, then over answers",
        choices=["token", "sequence"]))
    lora_r: int = field(default=16, metadata=doc("LoRA rank"))
    lora_alpha: int = field(default=32, metadata=doc("LoRA alpha"))
    lr: float = field(default=5e-5, metadata=doc("learning rate (AdamW)"))
    num_workers: int = field(default=1, metadata=doc("Ray Train learner workers"))
    num_actors: int = field(default=2, metadata=doc("rollout actors"))
    cpus_per_actor: float = field(default=0.5, metadata=doc("CPUs reserved per rollout actor"))
    gpus_per_actor: float = field(default=0.0, metadata=doc("GPUs per rollout actor (fractions share a GPU)"))
    gen_batch_size: int = field(default=16, metadata=doc("answers per generate call on an actor"))
    zero_stage: int = field(default=2, metadata=doc("DeepSpeed ZeRO stage (LoRA weights stay whole on every learner)",
                                                   choices=[0, 1, 2]))
    max_steps: int = field(default=100, metadata=doc("GRPO steps (rollout + updates)"))
    eval_every: int = field(default=25, metadata=doc("steps between validations (0: only at the start and end)"))
    checkpoint_every: int = field(default=25, metadata=doc("steps between checkpoints"))
    seed: int = field(default=0, metadata=doc("seed of the LoRA init, prompt order and sampling"))
    pack: bool = field(default=False, metadata=doc(
        "learner loss on packed rows: each prompt once, its group's answers after it (magseg_ray.train.packing)"))

    def __post_init__(self):  # actors and workers run elsewhere: ship local paths as absolute ones
        for name in ("model", "adapter", "data"):
            object.__setattr__(self, name, local_absolute(getattr(self, name)))

    def model_prompt(self):
        """The policy's prompt settings: those given here, the rest from the model's ``magseg.json``
        (a model is trained for one prompt layout; the defaults follow it)."""
        from magseg_ray.model.card import ModelPrompt, read_model_prompt

        given = {k: getattr(self, k) for k in ("schema", "patch_size", "local_crop", "crop_scale")}
        card = read_model_prompt(self.model) or ModelPrompt()
        return dataclasses.replace(card, chip_size=self.chip_size, **{k: v for k, v in given.items() if v is not None})

    def lora(self):
        from magseg_ray.model.lora import LoraSettings

        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=0.0)  # no dropout: ratio 1 on-policy

    def load_base(self, device="cpu"):
        """The start policy's model and processor: ``--model`` with ``--adapter`` merged in, if any,
        in ``dtype`` resolved for ``device``."""
        from magseg_ray.train.rollout import load_policy_base

        return load_policy_base(self.model, self.adapter or None, self.dtype, str(device))

    def export_dtype(self):
        """The ``--model`` checkpoint's dtype (the shipped demo model's bfloat16 stays 16 MB)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model, local_files_only=True).dtype


def check_config(cfg: GRPOConfig) -> None:
    """Fail before any actor or worker starts on what can be checked on the driver."""
    from magseg_ray.model.checkpoint import check_checkpoint_dir
    from magseg_ray.model.card import check_model_prompt
    from magseg_ray.train.rewards import get_reward

    if cfg.group_size < 2:
        raise ConfigError(f"group_size must be >= 2 (advantages are relative to the group), got {cfg.group_size}")
    if not cfg.data:
        raise ConfigError("--data is required: a catalog, folder or prefix of labelled scenes")
    check_checkpoint_dir(cfg.model)
    card = cfg.model_prompt()
    if cfg.chip_size % card.patch_size:
        raise ConfigError(f"chip_size {cfg.chip_size} is not a multiple of patch_size {card.patch_size}")
    if min(cfg.max_steps, cfg.checkpoint_every, cfg.updates_per_rollout, cfg.num_actors, cfg.num_workers) < 1:
        raise ConfigError("max_steps, checkpoint_every, updates_per_rollout, num_actors and num_workers must be >= 1")
    if cfg.prompts_per_step < cfg.num_workers:
        raise ConfigError(f"prompts_per_step {cfg.prompts_per_step} leaves a learner of {cfg.num_workers} "
                          "without prompts")
    if cfg.temperature <= 0 or cfg.max_new_tokens < 8:
        raise ConfigError("temperature must be > 0 and max_new_tokens >= 8")
    get_reward(cfg.reward)  # the actors import it again; fail here first
    check_model_prompt(cfg.model, card.prompt())  # flags given against the model's card
    if cfg.adapter:
        from magseg_ray.train.rollout import load_policy_base

        load_policy_base(cfg.model, cfg.adapter)  # ModelLoadError if the adapter does not fit


# ---- the loss --------------------------------------------------------------------------------

def group_advantages(rewards: np.ndarray, scale: bool = True, eps: float = 1e-4) -> np.ndarray:
    """Advantages of ``rewards`` (``groups x G``; NaN = dropped answer, whose advantage stays NaN):
    reward minus its group's mean, divided by the group's sample std plus ``eps`` when ``scale``.
    A group with fewer than two scored answers gets 0."""
    rewards = np.asarray(rewards, float)
    valid = ~np.isnan(rewards)
    count = valid.sum(1, keepdims=True)
    mean = np.where(valid, rewards, 0).sum(1, keepdims=True) / np.maximum(count, 1)
    centred = rewards - mean
    if scale:
        std = np.sqrt(np.where(valid, centred**2, 0).sum(1, keepdims=True) / np.maximum(count - 1, 1))
        centred = centred / (std + eps)
    return np.where(count >= 2, centred, np.where(valid, 0.0, np.nan))


def answer_logprobs(model, inputs: dict, labels, temperature: float = 1.0):
    """Log-probabilities of the answer tokens (``labels`` != IGNORE, right-aligned as
    :func:`~magseg_ray.train.batches.collate` makes them) and their mask, both ``B x n`` for the
    longest answer's ``n``; only the last ``n + 1`` positions' logits are computed."""
    import torch

    from magseg_ray.train.batches import IGNORE

    n = int((labels != IGNORE).sum(1).max())
    logits = model(**inputs, logits_to_keep=n + 1).logits[:, :-1].float() / temperature
    targets = labels[:, -n:]
    mask = targets != IGNORE
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, clip_low: float = 0.2, clip_high: float = 0.2,
              beta: float = 0.04, aggregation: str = "token"):
    """The clipped GRPO objective with the k3 KL penalty (see module doc), aggregated over the
    answer tokens in ``mask`` (``B x n``); ``advantages`` is ``B``. Returns the loss and the
    token-mean ``kl``, ``clip_fraction`` (tokens whose clipped term is the one taken) and ``ratio``."""
    import torch

    m = mask.float()
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    log_ref = ref_logp - logp
    kl = torch.exp(log_ref) - log_ref - 1
    per_token = (pg + beta * kl) * m
    if aggregation == "token":
        loss = per_token.sum() / m.sum().clamp(min=1)
    else:
        loss = (per_token.sum(1) / m.sum(1).clamp(min=1)).mean()
    with torch.no_grad():
        clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        total = m.sum().clamp(min=1)
        stats = {"kl": float((kl * m).sum() / total), "clip_fraction": float((clipped * m).sum() / total),
                 "ratio": float((ratio * m).sum() / total)}
    return loss, stats


def step_keys(n_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices into the prompt pool for ``step``: consecutive slices of a seeded shuffle, reshuffled
    every pass over the pool."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, n_prompts)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n_prompts)[pos]))
    return out


# ---- the learner -----------------------------------------------------------------------------

class _Learner:
    """One GRPO learner (a Ray Train worker): its LoRA policy and engine, the rollout actors, its
    run state and reporting."""

    def __init__(self, loop_config: dict):
        import ray
        import ray.train
        import torch

        from magseg_ray.model.lora import attach_lora
        from magseg_ray.train.engine import CheckpointState, deepspeed_engine, worker_device
        from magseg_ray.train.rollout import PromptSet, RolloutPool

        self.cfg = cfg = GRPOConfig(**loop_config["config"])
        self.pool = RolloutPool(loop_config["actors"])
        self.keys = loop_config["keys"]
        self.prompts = PromptSet(ray.get(loop_config["chips"]), cfg.prompt())
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device, bf16 = worker_device(cfg.use_gpu, cfg.dtype)
        model, self.processor = cfg.load_base(self.device)
        torch.manual_seed(cfg.seed)
        model = attach_lora(model, cfg.lora())
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        local_batch = -(-cfg.prompts_per_step // self.world) * cfg.group_size
        self.engine = deepspeed_engine(model, optimizer, local_batch, cfg.zero_stage, bf16)
        self.policy = self.engine.module
        self.run = CheckpointState(self.engine, self.rank,
                                   {"step": 0, "history": [], "restored_from_step": None, "start": None})
        self.state = self.run.state

    def publish(self):
        """The current LoRA weights in the object store (rank 0 only)."""
        import ray
        from peft import get_peft_model_state_dict

        if self.rank:
            return None
        lora = get_peft_model_state_dict(self.policy)
        return ray.put({k: v.detach().to("cpu", copy=True) for k, v in lora.items()})

    def report(self, row: dict, save: bool) -> None:
        self.run.report(row, save, lambda folder: self.policy.save_pretrained(folder / "adapter"))

    def rollout(self, step: int, weights) -> dict:
        """The groups of ``step``'s prompts, rolled out by rank 0 with ``weights`` and broadcast."""
        import torch.distributed as dist

        cfg = self.cfg
        keys = [self.keys[i] for i in step_keys(len(self.keys), step, cfg.prompts_per_step, cfg.seed)]
        shared = [self.pool.rollout(keys, step, weights, cfg.group_size, cfg.temperature, cfg.seed * 100_003 + step)
                  if self.rank == 0 else None]
        if self.world > 1:
            dist.broadcast_object_list(shared, src=0, device=self.device if self.device.type == "cuda" else None)
        return shared[0]

    def answers(self, groups: list[dict], rewards: np.ndarray) -> tuple[list[dict], list[float]]:
        """This learner's share of the scored answers (every ``world``-th group, flat groups left
        out, see module doc) as training records, and their advantages."""
        cfg = self.cfg
        advantages = group_advantages(rewards, scale=not cfg.dr_grpo, eps=cfg.adv_eps)
        answers, adv = [], []
        for gi in range(self.rank, len(groups), self.world):
            if not np.nanstd(rewards[gi]) > 0:
                continue
            record = self.prompts.record(groups[gi]["key"])
            for j, text in enumerate(groups[gi]["texts"]):
                if not np.isnan(rewards[gi, j]):
                    answers.append({**record, "target": text})
                    adv.append(advantages[gi, j])
        return answers, adv

    def update(self, answers: list[dict], adv: list[float]) -> dict:
        """``updates_per_rollout`` optimizer steps on ``answers``; the last one's loss statistics."""
        import torch

        from magseg_ray.train import packing
        from magseg_ray.train.batches import collate

        cfg, engine = self.cfg, self.engine
        if not answers:  # every answer of this learner was dropped: take part in the all-reduce with zeros
            for _ in range(cfg.updates_per_rollout):
                engine.backward(sum(p.sum() * 0 for p in self.policy.parameters() if p.requires_grad))
                engine.step()
            return {}
        if cfg.pack:  # a group's answers in one row, their prompt once
            batch = {k: v.to(self.device) for k, v in packing.pack(self.processor, answers, share="prompt").items()}

            def logprobs(m):
                return packing.answer_logprobs(m, batch, cfg.temperature)
        else:
            batch = {k: v.to(self.device) for k, v in collate(self.processor, answers).items()}
            labels = batch.pop("labels")

            def logprobs(m):
                return answer_logprobs(m, batch, labels, cfg.temperature)
        advantage = torch.tensor(adv, dtype=torch.float32, device=self.device)
        with torch.no_grad(), self.policy.disable_adapter():
            ref_logp, _ = logprobs(self.policy)
        old_logp = None
        for _ in range(cfg.updates_per_rollout):
            logp, mask = logprobs(engine)
            if old_logp is None:
                old_logp = logp.detach()
            loss, stats = grpo_loss(logp, old_logp, ref_logp, advantage, mask, cfg.clip_eps,
                                    cfg.clip_eps_high or cfg.clip_eps, cfg.beta, cfg.loss_aggregation)
            engine.backward(loss)
            engine.step()
            stats["loss"] = loss.item()
        return stats

    def after_step(self, step: int, rollout: dict, rewards: np.ndarray, trained: int, seconds: float,
                   stats: dict, weights) -> None:
        """The step's metrics row: progress line, validation and checkpoint as the step asks."""
        cfg = self.cfg
        finite = rewards[~np.isnan(rewards)]
        dice = np.array([g["dice"] for g in rollout["groups"]], float)
        row = {"step": step, "policy_version": step, "reward": float(finite.mean()) if finite.size else None,
               "reward_std": float(finite.std()) if finite.size else None, "dice": float(np.nanmean(dice)),
               "dropped": int(np.isnan(rewards).sum()), "drop_errors": rollout["errors"][:3],
               "zero_std_groups": int(sum(np.nanstd(r) == 0 for r in rewards)), "trained_answers": trained,
               "lag": max(step - 1 - v for v in rollout["versions"]), "answers_per_s": rollout["answers_per_s"],
               "step_s": seconds, "restored_from_step": self.state["restored_from_step"], **stats}
        if self.rank == 0:
            write_progress(cfg.run_dir / PROGRESS_FILE, step, f"reward {row['reward']:.4f}, dice {row['dice']:.4f}, "
                           f"kl {row.get('kl', 0):.5f}, dropped {row['dropped']}, {row['answers_per_s']:.1f} answers/s")
        evaluate = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
        if evaluate and self.rank == 0:
            row.update(self.pool.evaluate(step, weights))
        self.report(row, save=step % cfg.checkpoint_every == 0 or step == cfg.max_steps)


def learner_loop(loop_config: dict) -> None:
    """Ray Train worker: GRPO updates of the LoRA policy on this learner's share of each step."""
    learner = _Learner(loop_config)
    state = learner.state
    weights = learner.publish()
    if state["start"] is None:
        if learner.rank == 0:
            state["start"] = learner.pool.evaluate(0, weights)
        learner.report({"step": 0, "policy_version": 0, **(state["start"] or {})}, save=False)
    while state["step"] < learner.cfg.max_steps:
        step = state["step"]  # = the policy version the rollouts must use
        t0 = time.perf_counter()
        rollout = learner.rollout(step, weights)
        rewards = np.array([g["rewards"] for g in rollout["groups"]])
        answers, adv = learner.answers(rollout["groups"], rewards)
        stats = learner.update(answers, adv)
        state["step"] = step = step + 1
        weights = learner.publish()
        learner.after_step(step, rollout, rewards, len(answers), time.perf_counter() - t0, stats, weights)


# ---- the driver ------------------------------------------------------------------------------

def run_grpo(cfg: GRPOConfig) -> dict:
    """Run GRPO on the current Ray cluster; return the summary (also in ``metrics.json``)."""
    import ray

    from magseg_ray.chips.pipeline import validation_patches
    from magseg_ray.train.engine import torch_trainer
    from magseg_ray.train.rollout import PromptSet, RolloutPool

    check_config(cfg)
    prompt = cfg.prompt()
    chips = chip_splits(cfg, prompt)
    train = [c for c in chips("train").take(cfg.train_chips) if c["error"] is None]
    keys = PromptSet(train, prompt).keys()
    if len(keys) < cfg.prompts_per_step:
        raise ConfigError(f"{len(keys)} training patches in {cfg.train_chips} chips of {cfg.data!r}: fewer than "
                          f"prompts_per_step {cfg.prompts_per_step}")
    val = validation_patches(chips("val"), cfg.val_patches, prompt)
    if not val:
        raise ConfigError(f"no validation patches: raise val_fraction ({cfg.val_fraction}) or val_patches")

    chips_ref = ray.put(train)
    pool = RolloutPool.start(cfg.num_actors, cfg.cpus_per_actor, cfg.gpus_per_actor, model_dir=cfg.model,
                             adapter=cfg.adapter or None, lora=cfg.lora(), prompt=prompt, reward=cfg.reward,
                             train_chips=chips_ref, val_records=val, seed=cfg.seed,
                             max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size,
                             boundary_bias=cfg.model_prompt().boundary_bias, dtype=cfg.dtype)
    trainer = torch_trainer(learner_loop, {"config": dataclasses.asdict(cfg), "actors": pool.actors, "keys": keys,
                                           "chips": chips_ref}, cfg)
    try:
        progress = partial(read_progress, cfg.run_dir / PROGRESS_FILE)
        with Progress("[grpo] steps", total=cfg.max_steps, unit="steps", poll=progress):
            result = trainer.fit()
    finally:
        pool.shutdown()
    state = save_outputs(cfg, result)
    history = state["history"]
    start, final = state["start"], history[-1]
    summary = {"val_patches": len(val), "train_prompts": len(keys), "start": start, "final": final,
               "val_dice_gain": final["val_dice"] - start["val_dice"], "history": history}
    return write_summary(cfg, summary, ["reward", "dice", "kl", "clip_fraction", "val_dice"],
                         f"GRPO {cfg.run_name} (G={cfg.group_size}, beta={cfg.beta}, {cfg.num_actors} actors, "
                         f"{cfg.num_workers} learners)")
