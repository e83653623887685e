"""What every Ray Train worker of this project shares: device, DeepSpeed engine, checkpoints, trainer.

SFT (:mod:`magseg_ray.train.sft`) and GRPO's learners (:mod:`magseg_ray.train.grpo`) run the same
worker scaffolding, kept here once:

- :func:`worker_device`: the worker's GPU (NCCL, bf16 where the GPU has it) or the CPU (gloo, fp32);
- :func:`deepspeed_engine`: ``deepspeed.initialize`` with the project's config (ZeRO stage, gradient
  clipping at 1, a torch optimizer passed in so no fused kernel is compiled);
- :class:`CheckpointState`: the run state restored from Ray Train's latest checkpoint (DeepSpeed's
  engine state, one file per rank, plus ``state.json``) and reported with every metrics row, a
  checkpoint with the rows that ask for one;
- :func:`torch_trainer`: the ``TorchTrainer`` both jobs launch (failure restarts, two checkpoints
  kept, runs named and stored so that the same command resumes);
- :func:`prepare_cpu_comm`: DeepSpeed's CPU all-reduce op built once by the driver, stale build
  locks cleared, before CPU workers start.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from magseg_ray.config import TRAIN_DTYPES
from magseg_ray.errors import ConfigError

STALE_BUILD_LOCK_S = 600
"""Age in seconds after which a torch extension build lock is taken to be left by a killed build."""


def worker_device(use_gpu: bool, dtype: str = "auto"):
    """``(device, bf16)`` of this worker: its CUDA device or the CPU, and whether DeepSpeed trains in
    bf16: with ``dtype`` (``--dtype``) ``auto`` where the GPU has it, else as ``dtype`` says."""
    import torch

    if dtype not in TRAIN_DTYPES:
        raise ConfigError(f"training takes --dtype {', '.join(TRAIN_DTYPES)}, got {dtype!r}")
    gpu = use_gpu and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    return device, (gpu and torch.cuda.is_bf16_supported()) if dtype == "auto" else dtype == "bfloat16"


def deepspeed_engine(model, optimizer, batch: int, zero_stage: int, bf16: bool, scheduler=None):
    """The DeepSpeed engine training ``model`` with ``optimizer`` (and ``scheduler``)."""
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": zero_stage}, "bf16": {"enabled": bf16},
              "gradient_clipping": 1.0, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
                                      dist_init_required=False)
    return engine


class CheckpointState:
    """A worker's run state (``state``, a JSON-able dict with a ``history`` list) and its reporting."""

    def __init__(self, engine, rank: int, initial: dict):
        import ray.train

        self.engine, self.rank, self.state = engine, rank, initial
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                engine.load_checkpoint(d, tag="ds")
                self.state = json.loads((Path(d) / "state.json").read_text())
                self.state["restored_from_step"] = self.state["step"]

    def report(self, row: dict, save: bool, save_rank0: Callable[[Path], None] | None = None) -> None:
        """Append ``row`` to the history and report it; with ``save``, also a checkpoint: every rank's
        engine state, and on rank 0 ``state.json`` and whatever ``save_rank0(folder)`` writes."""
        import ray.train

        self.state["history"].append(row)
        if not save:
            ray.train.report(row)
            return
        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag="ds")
            if self.rank == 0:
                (Path(d) / "state.json").write_text(json.dumps(self.state))
                if save_rank0:
                    save_rank0(Path(d))
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


def prepare_cpu_comm() -> None:
    """Build DeepSpeed's shared-memory CPU all-reduce op on the driver, before CPU workers start.

    Every CPU worker of a DeepSpeed run loads this op; when it is not built yet, the workers build it
    under one file lock in the torch extensions folder. A build killed half way (a stopped run, a
    test timeout) leaves that lock behind, and every later run on the machine then waits on it
    forever (torch takes the lock before it looks for a built library). Here the driver removes a
    lock older than :data:`STALE_BUILD_LOCK_S` and builds the op once, so workers on this machine
    only load it.
    """
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        return
    folder = Path(_get_build_directory(builder.NAME, verbose=False))
    lock = folder / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
        lock.unlink(missing_ok=True)
    builder.load(verbose=False)


def torch_trainer(loop, loop_config: dict, cfg, datasets: dict | None = None):
    """A ``TorchTrainer`` for ``loop`` from a run config (:class:`~magseg_ray.train.driver.RunConfig`:
    its ``run_name``, ``storage``, ``num_workers``, ``use_gpu``, ``cpus_per_worker`` and ``max_failures``)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if not cfg.use_gpu:
        prepare_cpu_comm()
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=cfg.run_name, storage_path=str(Path(cfg.storage).resolve()),
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
    )
