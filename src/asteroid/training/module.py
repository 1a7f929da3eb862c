"""The LightningModule around any forecaster: losses, scheduled sampling, augmentation, metrics, dashboards."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics import MeanMetric

from asteroid.checkpoints import DATA_KEY, TRAIN_POSITION_KEY
from asteroid.data.signature import DataSignature, split_summary
from asteroid.errors import ConfigError, DataError, DivergedError
from asteroid.fileio import atomic_output
from asteroid.models.base import ForecastModel
from asteroid.models.bonded import BondedGeometry, TransferableBondLengths
from asteroid.models.noise import GaussMarkovNoise, windows_step_energy
from asteroid.runs import run_dir
from asteroid.schedule import training_progress, warmup_cosine
from asteroid.training.augment import random_rotations, random_walk_noise, rotate_windows
from asteroid.training.evaluation import Evaluation
from asteroid.training.metrics import ForecastMetrics, SpreadSkill
from asteroid.training.test_table import REFERENCE_ORDERS

if TYPE_CHECKING:
    from asteroid.data.dataset import Window


class ForecastModule(Evaluation, pl.LightningModule):
    """Trains and evaluates `net` (ASTEROID or a baseline) on windows from `TrajectoryDataModule`.

    The forecast loss is the MSE of each horizon step in units of that step's training RMS displacement, so every
    step weighs the same. Auxiliary losses the net returns (e.g. the STI terms) are added with `aux_loss_weights`.
    Scheduled sampling: the probability that a decoder step sees its own prediction rises linearly from 0 to
    `max_sampling_prob` over the first `sampling_ramp` fraction of training. Warm-up, learning-rate decay and this
    ramp follow the fraction of the run done (`asteroid.schedule.training_progress`): of `max_steps`, or of a CPU-time
    budget when that ends the run first, so a budget-limited run still ends its schedule. `warmup_steps` is a share
    of `max_steps`, the same share of a budget. `history_noise` > 0 perturbs the
    training histories (see `random_walk_noise`) so that long rollouts stay stable.

    For long rollouts (docs/design.md, "Rollouts"): `bond_constraints` projects every forecast, in training too,
    onto bond lengths a head predicts (its likelihood added as "bond_nll", weight 1) and the 1-3 distance ranges of
    the training frames (`models.bonded`), and with `transferable_bonds` onto lengths read from each molecule, by a
    head fitted to none (a model for many molecules: its forecasts are projected at inference only); `stochastic`
    learns a distribution around the forecast (`models.noise`, its likelihood added to the loss as "noise_nll" with
    weight 1, the mean untouched by it) that rollouts sample from, and the test table then reports the spread of
    `test_samples` draws against the error of their mean (spread-skill, 1 = calibrated).

    Validation, test and predict steps, their metrics and dashboards are `evaluation.Evaluation`'s.
    """

    def __init__(
        self,
        net: ForecastModel,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        aux_loss_weights: dict[str, float] | None = None,
        max_sampling_prob: float = 0.5,
        sampling_ramp: float = 0.5,
        rotation_augmentation: bool = True,
        history_noise: float = 0.0,
        bond_constraints: bool = False,
        transferable_bonds: bool = False,
        stochastic: bool = False,
        test_samples: int = 8,
    ):
        super().__init__()
        if not lr > 0:
            raise ConfigError(f"model.lr must be a positive number, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if warmup_steps < 0:
            raise ConfigError(f"model.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= max_sampling_prob <= 1:
            raise ConfigError(f"model.max_sampling_prob is a probability, in [0, 1]; got {max_sampling_prob}")
        if sampling_ramp < 0:
            raise ConfigError(f"model.sampling_ramp must be >= 0 (a fraction of the run), got {sampling_ramp}")
        negative = {k: v for k, v in (aux_loss_weights or {}).items() if v < 0}
        if negative:
            raise ConfigError(
                f"model.aux_loss_weights.{next(iter(negative))} must be >= 0, got {next(iter(negative.values()))}"
            )
        if history_noise < 0:
            raise ConfigError(f"model.history_noise must be >= 0 Angstrom, got {history_noise}")
        if test_samples < 2:
            raise ConfigError(f"model.test_samples must be >= 2 (a spread needs two draws), got {test_samples}")
        if lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"model.lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        if transferable_bonds and not bond_constraints:
            raise ConfigError(
                "model.transferable_bonds reads the bond lengths that model.bond_constraints imposes from each "
                "molecule: set model.bond_constraints true too"
            )
        if transferable_bonds:
            net.bond_head = TransferableBondLengths(net.history, net.horizon)
        elif bond_constraints:
            net.bonded = BondedGeometry(net.history, net.horizon)
        if stochastic:
            net.noise = GaussMarkovNoise(net.history, net.horizon)
        # Nets without parameters (the extrapolation baselines) go through `fit` for validation and test only.
        self.automatic_optimization = any(p.requires_grad for p in net.parameters())
        self.aux_loss_weights = aux_loss_weights or {"sti_primary": 1.0, "sti_consistency": 0.1, "sti_conjugate": 0.1}
        self.val_metrics = ForecastMetrics(net.horizon)
        self.test_metrics = torch.nn.ModuleDict({"model": ForecastMetrics(net.horizon)})
        self.val_reference_metrics = torch.nn.ModuleDict()  # constant and linear on the validation windows: figures
        # RMS over atoms and steps of f(rotated window) - rotated f(window): how far from rotation-equivariant
        self.rotation_error = MeanMetric()
        self._training_rng_state = self._rng_state_to_restore = None  # see on_validation_start
        self.spread_skill = SpreadSkill(net.horizon)
        self.val_loss = MeanMetric()
        self.layout = None
        self._first_val_batch = None

    # ---- set-up ------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        if (datamodule.history, datamodule.horizon) != (self.net.history, self.net.horizon):
            raise ConfigError(
                f"the net forecasts {self.net.history} -> {self.net.horizon} frames but the data "
                f"windows are {datamodule.history} -> {datamodule.horizon}"
            )
        self.layout = datamodule.layout
        # A checkpoint loaded after setup restores its own scale, so this only matters for a fresh net.
        self.net.set_displacement_scale(datamodule.displacement_scale.to(self.device))
        if self.net.noise is not None:
            energy = windows_step_energy(datamodule.datasets["train"], seed=datamodule.seed)
            if not energy < torch.finfo(torch.float32).max:
                raise DataError(
                    f"training windows: the mean square frame-to-frame step is {energy:.3g} amu A^2, "
                    "beyond float32; are the coordinates in Angstrom?"
                )
            self.net.noise.step_energy.fill_(energy)
        if self.net.bonded is not None:  # refitted from the same training frames, or replaced by a checkpoint's
            z, frames = datamodule.training_frames()
            self.net.bonded.fit(z, frames)
            self.net.bonded.to(self.device)
        for name, order in REFERENCE_ORDERS.items():
            if order < self.net.history and name not in self.test_metrics:
                self.test_metrics[name] = ForecastMetrics(self.net.horizon).to(self.device)
                self.val_reference_metrics[name] = ForecastMetrics(self.net.horizon).to(self.device)

    @property
    def run_dir(self) -> Path | None:
        return run_dir(self.trainer)

    @rank_zero_only
    def on_fit_start(self) -> None:
        """Say what the windows are; save the split definition with the run; show the run's whole config in
        TensorBoard's text tab."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            print(datamodule.describe())
        if self.run_dir is not None and datamodule is not None:
            with atomic_output(self.run_dir / "splits.json", "w") as handle:
                json.dump(split_summary(datamodule), handle, indent=1)
        config = self.run_dir / "config.yaml" if self.run_dir is not None else None
        if isinstance(self.logger, TensorBoardLogger) and config is not None and config.is_file():
            self.logger.experiment.add_text("config", "```yaml\n" + config.read_text() + "\n```")

    # ---- exact resumption ------------------------------------------------------------------------------------
    # Lightning does not restore random states, so a resumed run would rotate and sample differently from an
    # uninterrupted one; keeping torch's state and the place in the epoch's order (see EpochShuffle) in the
    # checkpoint makes resuming exact, in mid-epoch too. Validation (the sanity check too, and one rerun after a
    # run stopped inside it) is kept off training's random stream.
    def on_validation_start(self) -> None:
        self._training_rng_state = torch.get_rng_state()

    def on_validation_end(self) -> None:
        torch.set_rng_state(self._training_rng_state)
        self._training_rng_state = None

    def on_train_start(self) -> None:
        if self._rng_state_to_restore is not None:
            torch.set_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["torch_rng_state"] = (
            torch.get_rng_state() if self._training_rng_state is None else self._training_rng_state
        )
        fit_loop = self.trainer.fit_loop  # the epoch begun last: current_epoch already counts it once it has ended
        checkpoint[TRAIN_POSITION_KEY] = {
            "epoch": fit_loop.epoch_progress.current.started - 1,
            "batches": fit_loop.epoch_loop.batch_progress.current.processed,
        }
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:  # no bond table of one molecule: the net may forecast others (signature.py)
            signature = replace(datamodule.signature(), fitted_to_one_molecule=self.net.bonded is not None)
            checkpoint[DATA_KEY] = signature.as_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            recorded = DataSignature.from_dict(checkpoint.get(DATA_KEY))
            datamodule.check_signature(recorded, str(self.trainer.ckpt_path or "the checkpoint"))
        # set when training starts: the sanity-check validation that Lightning runs first draws random numbers too
        self._rng_state_to_restore = checkpoint.get("torch_rng_state")
        if datamodule is not None and TRAIN_POSITION_KEY in checkpoint:
            datamodule.resume_at(**checkpoint[TRAIN_POSITION_KEY])

    # ---- losses ------------------------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the run done, in [0, 1] (steps of max_steps, or the CPU budget used if further along)."""
        return training_progress(self.trainer)

    @property
    def sampling_prob(self) -> float:
        ramp = self.hparams.sampling_ramp
        return self.hparams.max_sampling_prob * min(1.0, self.progress / ramp) if ramp > 0 else 0.0

    def forecast_loss(self, pred, target, mask):
        """MSE over real atoms, each horizon step in units of its training RMS displacement."""
        scale = self.net.displacement_scale[None, :, None, None]  # (1, P, 1, 1)
        err = ((pred - target) / scale).square().sum(-1)  # (B, P, N)
        weights = mask[:, None, :].expand_as(err).to(err.dtype)
        return (err * weights).sum() / (3 * weights.sum())

    def training_step(self, batch: Window, batch_idx: int):
        if self.hparams.rotation_augmentation:
            batch = rotate_windows(batch, random_rotations(len(batch["history"]), self.device, batch["history"].dtype))
        history, target, mask = batch["history"], batch["target"], batch["mask"]
        if self.hparams.history_noise > 0:
            history = history + random_walk_noise(history, self.hparams.history_noise)
        sampling_prob = self.sampling_prob  # asks the trainer and the clock: once per step
        out = self.net(history, batch["z"], mask, target=target, sampling_prob=sampling_prob, box=batch.get("box"))
        pred = self.net.constrain(out.pred, batch["z"], history)
        forecast = self.forecast_loss(pred, target, mask)
        unknown = set(out.losses) - set(self.aux_loss_weights)
        if unknown:
            raise ConfigError(f"the net returns losses {sorted(unknown)} with no weight in model.aux_loss_weights")
        aux = {name: self.aux_loss_weights[name] * value for name, value in out.losses.items()}
        if self.net.bonded is not None and self.net.bonded.fitted:
            aux["bond_nll"] = self.net.bonded.length_nll(history, target)
            # the unprojected forecast is scored too, so that it stays near the constraints: trained through the
            # projection alone, the net parked its output far off them (0.5 A on ethanol), where only that
            # projection's own path mapped it back to the right frames (issue 25)
            aux["unprojected"] = self.forecast_loss(out.pred, target, mask)
        if self.net.bond_head is not None:  # the forecast itself is not projected in training: a batch holds molecules
            aux["bond_nll"] = self.net.bond_head.nll(history, target, batch["z"], mask)
        if self.net.noise is not None:
            aux["noise_nll"] = self.net.noise.nll(history, batch["z"], mask, pred, target, self.net.displacement_scale)
        loss = forecast + sum(aux.values())
        if not torch.isfinite(loss):  # stop here: a NaN run must never reach a checkpoint, let alone `best`
            raise DivergedError(
                f"training diverged at step {self.global_step}: the loss is {loss.item()} (forecast "
                f"{forecast.item()}); lower model.lr (now {self.hparams.lr}) or check the data"
            )
        size = len(history)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/forecast", forecast, batch_size=size)
        for name, value in aux.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/sampling_prob", sampling_prob, batch_size=size)
        return loss

    # ---- evaluation --------------------------------------------------------------------------------------------
    def forward(self, batch: Window) -> torch.Tensor:
        """(B, P, N, 3) forecast mean of a batch of windows, feeding the model's own predictions (inference)."""
        return self.net.generate(batch["history"], batch["z"], batch["mask"], box=batch.get("box"))

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        if not self.automatic_optimization:
            return None
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        total = max(self.trainer.estimated_stepping_batches, 1)
        warmup = min(self.hparams.warmup_steps / total, 0.5)
        # The factor ignores the step count LambdaLR passes: a CPU budget may end the run before max_steps.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda _: warmup_cosine(self.progress, warmup, step_share=1 / total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
