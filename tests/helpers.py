"""Shared test fixtures' building blocks: tiny trajectories and a callback that simulates a crash."""
import numpy as np
import pytorch_lightning as pl


def write_toy_trajectory(path, n_frames=600, z=(6, 6, 8, 1, 1, 1, 1, 1, 1), seed=0):
    """A smooth time-ordered trajectory: atoms oscillating about fixed positions 1.5 A apart on average."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None, None] * 0.05
    R = rng.normal(size=(1, len(z), 3)) * 1.5 + 0.1 * np.sin(t * rng.uniform(0.5, 2, size=(1, len(z), 3)))
    np.savez(path, R=R.astype(np.float32), z=np.asarray(z), dt_fs=0.5)
    return path


class CrashAtStep(pl.Callback):
    """Raise in the middle of training, as a killed job would stop."""

    def __init__(self, step: int = 12):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
