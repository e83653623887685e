"""Worker scaffolding shared by SFT and GRPO."""

import os
import time
from pathlib import Path

from magseg_ray.train.engine import STALE_BUILD_LOCK_S, prepare_cpu_comm


def test_a_stale_extension_build_lock_no_longer_hangs_the_next_run():
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    prepare_cpu_comm()  # builds the op (or finds it built) in this machine's extensions folder
    folder = Path(_get_build_directory(get_accelerator().create_op_builder("ShareMemCommBuilder").NAME, False))
    lock = folder / "lock"
    lock.touch()  # a build killed half way leaves its lock
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    prepare_cpu_comm()  # torch would wait on the lock forever; the stale lock is cleared first
    assert not lock.exists()
