"""How far a run is through its training schedule, and the schedules that follow it.

A run ends at `max_steps` or, with a `CPUTimeBudget`, when its CPU time is spent, whichever comes first. The
learning-rate warm-up and cosine decay and the scheduled-sampling ramp follow the same fraction, so every model
ends its schedule when its run ends: under `asteroid compare`'s equal budget a slow model anneals like a fast one,
instead of being cut off at step ~900 of a 3000-step cosine with its learning rate still high.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class CPUTimeBudget(Callback):
    """Stops training once this process has used `minutes` of CPU time.

    `asteroid compare` gives every model the same budget with it: unlike the Trainer's wall-clock `max_time`, CPU time
    does not shrink when other work shares the machine. Run single-threaded (`OMP_NUM_THREADS=1`) so that CPU time
    and compute agree. `clock` is for tests (a fake clock); it defaults to this process's CPU time.
    """

    def __init__(self, minutes: float, clock: Callable[[], float] = time.process_time):
        self.seconds = 60.0 * minutes
        self.clock = clock
        self.start: float | None = None  # set when training starts: set-up and data loading are not charged
        self.spent_before = 0.0  # CPU seconds of the run before it was resumed, from its checkpoint

    def used(self) -> float:
        """CPU seconds of training so far, resumed runs included."""
        return self.spent_before + (self.clock() - self.start if self.start is not None else 0.0)

    def fraction_used(self) -> float:
        """Share of the budget spent so far: 0 before training starts, 1 (or more) once it is spent."""
        return self.used() / self.seconds if self.seconds > 0 else 1.0

    # A resumed run goes on with the budget it had left, and its schedule from where it was.
    def state_dict(self) -> dict:
        return {"spent": self.used()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.spent_before = state_dict["spent"]

    def on_train_start(self, trainer, pl_module):
        self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fraction_used() >= 1.0:
            trainer.should_stop = True


def training_progress(trainer: pl.Trainer) -> float:
    """Fraction of the run done, in [0, 1]: steps of the planned steps, or the CPU budget used if further along."""
    fractions = [trainer.global_step / max(trainer.estimated_stepping_batches, 1)]
    fractions += [callback.fraction_used() for callback in trainer.callbacks if isinstance(callback, CPUTimeBudget)]
    return min(1.0, max(fractions))


def warmup_cosine(progress: float, warmup: float, step_share: float = 0.0) -> float:
    """Learning-rate factor of a step taken at `progress`: a linear warm-up over the first `warmup` fraction of the
    run, then a cosine to 0. During warm-up the step counts itself (`step_share`, one step's share of the run), so
    the first step's rate is not 0: without a budget, step s of a 100-step warm-up gets (s + 1) / 100."""
    if progress < warmup:
        return min(1.0, (progress + step_share) / warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1.0 - warmup, 1e-12))))
