"""How many CPU threads torch uses: chosen once for the machine, by the command line and `asteroid.load` alike."""

from __future__ import annotations

import os
import sys

import torch


def choose_threads() -> None:
    """torch's CPU threads, unless OMP_NUM_THREADS says: one on up to 2 cores, where `make train EXP=ethanol` ran 6x
    faster on one thread than on torch's default two and a 1000-frame rollout 15x faster (their steps are too small
    to share, and a second thread waits on whatever else runs); half the cores, at most 4, on larger machines (not
    measured here). Says so on stderr, with how to override it, when it changes torch's choice."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0))
    threads = 1 if cores <= 2 else min(4, cores // 2)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        print(
            f"asteroid: {threads} torch thread(s) on {cores} core(s); set OMP_NUM_THREADS (or torch.set_num_threads "
            "afterwards) to choose",
            file=sys.stderr,
        )
