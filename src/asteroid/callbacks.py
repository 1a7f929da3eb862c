"""Trainer callbacks the `asteroid` command adds to every run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter, Callback

from asteroid.data.datamodule import collate_windows
from asteroid.fileio import atomic_output
from asteroid.module import run_dir

CONFIG_KEY = "asteroid_model_config"


class ModelConfigInCheckpoint(Callback):
    """Stores the model section of the run's config in every checkpoint, so a later `--ckpt_path` can be checked."""

    def __init__(self, model_config: dict):
        self.model_config = model_config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.model_config


class PredictionWriter(BasePredictionWriter):
    """Writes `asteroid predict`'s forecasts of the test windows to `<run dir>/predictions.npz`.

    Arrays: pred, target (W, P, N, 3) and history (W, H, N, 3) in Angstrom, z and mask (W, N); molecules of different
    sizes are padded to the largest (mask False on padding).
    """

    def __init__(self):
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        if not trainer.is_global_zero or not predictions:
            return
        windows = [{key: value[i] for key, value in batch.items()} for batch in predictions
                   for i in range(len(batch["pred"]))]
        arrays = {key: value.numpy() for key, value in collate_windows(windows).items()}
        path = (run_dir(trainer) or Path(".")) / "predictions.npz"
        with atomic_output(path) as handle:
            np.savez(handle, **arrays)
        print(f"predictions of {len(arrays['pred'])} windows written to {path}")
