"""Trainer callbacks the `asteroid` command adds to every run."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter, Callback, ModelCheckpoint, ModelSummary, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n, convert_inf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

from asteroid.checkpoints import (
    CONFIG_KEY,
    DATA_KEY,
    RUN_CONFIG_KEY,
    check_finite_weights,
    load_state,
    read_checkpoint,
)
from asteroid.data.dataset import collate_windows
from asteroid.data.signature import DataSignature
from asteroid.fileio import atomic_output
from asteroid.runs import run_dir


class ConfigInCheckpoint(Callback):
    """Stores the run's config in every checkpoint: its model section, so that a later `--ckpt_path` can be checked
    against a config, and all of it, so that the checkpoint alone rebuilds the model and its data."""

    def __init__(self, model_config: dict, run_config: str):
        self.model_config, self.run_config = model_config, run_config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[CONFIG_KEY] = self.model_config
        checkpoint[RUN_CONFIG_KEY] = self.run_config


# The part of a net fitted to one molecule (model.bond_constraints): absent from a model for many molecules, whose
# bond lengths come from a head read from each molecule (model.transferable_bonds) instead.
FITTED_HEAD, TRANSFERABLE_HEAD = "net.bonded.", "net.bond_head."


class InitialWeights(Callback):
    """`fit --ckpt_path` with a weights-only checkpoint (the shipped pretrained model): a new run that starts from its
    weights (the network's displacement scale included, which the weights are in units of) with a fresh optimizer,
    schedule and step count, that is, a fine-tune. Loaded when fitting starts, after the data are set up, so that
    the data are checked against what the checkpoint was trained on."""

    def __init__(self, ckpt_path: str):
        self.ckpt_path = ckpt_path

    def on_fit_start(self, trainer, pl_module):
        checkpoint = read_checkpoint(self.ckpt_path)
        trainer.datamodule.check_signature(DataSignature.from_dict(checkpoint.get(DATA_KEY)), self.ckpt_path)
        check_finite_weights(checkpoint["state_dict"], self.ckpt_path)
        state = checkpoint["state_dict"]
        if pl_module.net.bond_head is None:  # a fine-tune with a bond table of its own leaves the transferable head
            state = {key: value for key, value in state.items() if not key.startswith(TRANSFERABLE_HEAD)}
        # a head fitted to one molecule (the bond lengths), which a model for many molecules has none of, starts new
        fresh = load_state(pl_module, state, self.ckpt_path, fresh=(FITTED_HEAD,))
        if trainer.is_global_zero:
            print(f"fine-tuning from the weights of {self.ckpt_path} (a new run: fresh optimizer and schedule)")
            if fresh:
                print("the bond-length head is new: fitted to this molecule's training frames, trained from scratch")


class CheckpointOnInterrupt(Callback):
    """SIGTERM (a pre-empted SLURM job) or Ctrl+C during `fit`: the run stops at the end of the training step it is
    in, saves last.ckpt there, and `--ckpt_path last` goes on from there exactly as if never stopped. The command
    then exits with 128 + the signal's number (see cli.main), never as if finished. A second Ctrl+C stops at once.

    Ctrl+C is turned into Lightning's SIGTERM flag: a KeyboardInterrupt lands anywhere, between a step's random
    draws and its update too, and a checkpoint saved there would not resume to the uninterrupted result.
    """

    def __init__(self):
        self.signum, self._previous_handler = signal.SIGTERM, None

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, lambda *_: self._on_ctrl_c(trainer))

    def _on_ctrl_c(self, trainer):
        if self.signum == signal.SIGINT:  # the second time
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signal.SIGINT
        trainer._signal_connector.received_sigterm = True  # Lightning checks it after each step (and on all ranks)
        print(
            "\nasteroid: Ctrl+C: stopping after this step to save a checkpoint (Ctrl+C again stops at once)",
            file=sys.stderr,
        )

    def teardown(self, trainer, pl_module, stage):
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        exception.signum = self.signum  # the exit status (cli.main)
        last = next(
            (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor is None), None
        )
        if last is None or last.dirpath is None:
            return
        path = Path(last.dirpath) / f"{last.filename}{last.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(
                f"asteroid: {signal.Signals(self.signum).name} at step {trainer.global_step}: saved {path}; "
                "resume with --ckpt_path last",
                file=sys.stderr,
            )


class ValidateLastStep(Callback):
    """Makes the last training step a validation step, wherever it falls.

    Lightning validates every `val_check_interval` steps and when training is stopped early, but not when `max_steps`
    or `max_epochs` ends training between two checks: the last steps would never be scored, and the test after `fit`
    would take an older best checkpoint. Asking to stop at the last step makes Lightning validate there.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last_step = 0 < trainer.max_steps <= trainer.global_step
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
        if last_step or (last_epoch and batch_idx + 1 >= trainer.num_training_batches):
            trainer.should_stop = True


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
        windows = [
            {key: value[i] for key, value in batch.items()} for batch in predictions for i in range(len(batch["pred"]))
        ]
        arrays = {key: value.numpy() for key, value in collate_windows(windows).items()}
        path = (run_dir(trainer) or Path(".")) / "predictions.npz"
        with atomic_output(path) as handle:
            np.savez(handle, **arrays)
        print(f"predictions of {len(arrays['pred'])} windows written to {path}")


class ParameterSummary(ModelSummary):
    """Lightning's model summary without its FLOPs, which it counts only for a model with an `example_input_array`
    and prints as 0 otherwise (`asteroid benchmark` counts a forecast's FLOPs)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, modes, total_flops, **_) -> None:
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, modes, 0, *columns)
        print("\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")))


class RunProgressBar(TQDMProgressBar):
    """One bar for the whole run, `step n/max_steps` with the run's ETA (Lightning's restarts each epoch, and reads
    `Epoch 0/-2` for a run bounded by max_steps), with the training loss and the latest validation MSE."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer)  # a run resumed in mid-epoch starts no epoch, and would show `9/?`

    def on_train_epoch_start(self, trainer, *_):
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        bar = self.train_progress_bar
        if bar.total != convert_inf(total):  # once: the bar goes on across epochs
            bar.reset(total=convert_inf(total))
            # a resumed run starts at its step: the rate and ETA count the steps made here, not the 3000 before
            bar.initial = trainer.global_step
            bar.set_description("train step")
        _update_n(bar, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total):
            _update_n(bar, trainer.global_step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module):
        logged = trainer.progress_bar_metrics
        shown = {"loss": logged.get("train/loss")}
        if "val/mse_mean" in logged:
            shown["val MSE (Å²)"] = logged["val/mse_mean"]
        return {key: f"{value:.3g}" for key, value in shown.items() if value is not None}
