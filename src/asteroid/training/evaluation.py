"""Validation, test and predict steps of `ForecastModule`: metrics per horizon step, the references beside the
model (last frame held, linear extrapolation), rotation equivariance, spread-skill of sampled forecasts, the test
table and the validation figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from asteroid.errors import DivergedError
from asteroid.models.baselines.extrapolation import extrapolate
from asteroid.training.augment import random_rotations, rotate, rotate_windows
from asteroid.training.figures import error_vs_horizon, trajectory_traces
from asteroid.training.metrics import with_step_axis
from asteroid.training.test_table import REFERENCE_ORDERS, metrics_table, report_test

if TYPE_CHECKING:
    from asteroid.data.dataset import Window


class Evaluation:
    """The evaluation hooks, mixed into `ForecastModule`, which owns what they use: `net`, `layout`, the metrics
    (`val_metrics`, `val_reference_metrics`, `test_metrics`, `rotation_error`, `spread_skill`, `val_loss`),
    `forecast_loss`, `run_dir` and `hparams.test_samples`; `self(batch)` is the forecast mean."""

    def _update(self, metric, pred, batch):
        metric.update(pred, batch["target"], batch["mask"], batch["z"], batch["history"][:, -1])

    def validation_step(self, batch: Window, batch_idx: int):
        pred = self(batch)
        # A metric object, so that devices holding different numbers of windows are weighted by their windows
        self.val_loss.update(self.forecast_loss(pred, batch["target"], batch["mask"]), weight=len(pred))
        self.log("val/loss", self.val_loss)
        self._update(self.val_metrics, pred, batch)
        for name, metric in self.val_reference_metrics.items():
            guess = extrapolate(
                batch["history"], self.layout.history_offsets, self.layout.target_offsets, REFERENCE_ORDERS[name]
            )
            self._update(metric, guess, batch)
        if batch_idx == 0:
            self._first_val_batch = {k: batch[k][0].detach().cpu() for k in ("history", "target")}
            self._first_val_batch["pred"] = pred[0].detach().float().cpu()

    def on_validation_epoch_end(self):
        val_loss = None if self.trainer.sanity_checking else self.val_loss.compute()
        if val_loss is not None and not torch.isfinite(val_loss):
            # raised before the checkpoint callbacks run, so these weights are saved as neither last nor best
            raise DivergedError(
                f"training diverged by step {self.global_step}: the validation loss is "
                f"{val_loss.item()}; lower model.lr (now {self.hparams.lr})"
            )
        values = with_step_axis(self.val_metrics.compute())
        self.val_metrics.reset()
        references = {}
        for name, metric in self.val_reference_metrics.items():
            references[name] = with_step_axis(metric.compute())["mse"].cpu()
            metric.reset()
        self._log_per_step("val", values)
        if self.trainer.sanity_checking:
            return
        self._log_figures(values, references)

    def test_step(self, batch: Window, batch_idx: int):
        pred = self(batch)
        self._update(self.test_metrics["model"], pred, batch)
        rotation = random_rotations(len(pred), pred.device, batch["history"].dtype)
        rotated = self(rotate_windows(batch, rotation))
        mismatch = (rotated - rotate(pred, rotation)).square().sum(-1)  # (B, P, N)
        real = batch["mask"][:, None, :].expand_as(mismatch)
        self.rotation_error.update(((mismatch * real).sum((1, 2)) / real.sum((1, 2))).sqrt())
        if self.net.noise is not None:
            draws = torch.stack(
                [
                    self.net.generate(batch["history"], batch["z"], batch["mask"], box=batch.get("box"), sample=True)
                    for _ in range(self.hparams.test_samples)
                ]
            )
            self.spread_skill.update(draws, batch["target"], batch["mask"])
        for name, order in REFERENCE_ORDERS.items():
            if name in self.test_metrics:
                guess = extrapolate(batch["history"], self.layout.history_offsets, self.layout.target_offsets, order)
                self._update(self.test_metrics[name], guess, batch)

    def on_test_epoch_end(self):
        rows = []
        for name, metric in self.test_metrics.items():
            values = with_step_axis(metric.compute())
            metric.reset()
            if name == "model":
                self._log_per_step("test", values)
            label = type(self.net).__name__ if name == "model" else name
            rows += [{"model": label, **row} for row in metrics_table(values, self.net.horizon)]
        rotation_error = self.rotation_error.compute()
        self.rotation_error.reset()
        self.log("test/rotation_error", rotation_error, sync_dist=True)
        calibration = None
        if self.net.noise is not None:
            calibration = {key: value.reshape(-1) for key, value in self.spread_skill.compute().items()}  # (P,)
            self.spread_skill.reset()
            for k, ratio in enumerate(calibration["ratio"]):
                self.log(f"test_spread_skill_per_step/step_{k + 1:02d}", ratio.float(), sync_dist=True)
        self._report_test(rows, float(rotation_error), calibration)

    @rank_zero_only
    def _report_test(self, rows, rotation_error, calibration=None):
        report_test(rows, rotation_error, calibration, self.hparams.test_samples, self.run_dir)

    def predict_step(self, batch, batch_idx):
        return {"pred": self(batch).float(), **batch}

    # torchmetrics' compute() has already gathered every device's windows, so these values agree on all devices;
    # sync_dist=True only tells Lightning so (averaging equal values).
    def _log_per_step(self, split, values):
        for name in ("mse_mean", "mae_mean", "rmsd_mean", "bond_mean", "ADE", "FDE"):
            self.log(f"{split}/{name}", values[name].float(), prog_bar=name == "mse_mean", sync_dist=True)
        for name in ("mse", "rmsd"):
            for k, v in enumerate(values[name]):
                self.log(f"{split}_{name}_per_step/step_{k + 1:02d}", v.float(), sync_dist=True)

    @rank_zero_only
    def _log_figures(self, values, references: dict):
        if not isinstance(self.logger, TensorBoardLogger) or self._first_val_batch is None:
            return
        step_fs = None
        if self.layout is not None and getattr(self.trainer, "datamodule", None) is not None:
            step_fs = float(self.trainer.datamodule.lead_times_fs[0])
        experiment = self.logger.experiment
        per_step = {type(self.net).__name__: values["mse"].cpu(), **references}  # MSE, Angstrom^2
        figure = error_vs_horizon(
            per_step, step_fs, title=f"validation, step {self.global_step}", ylabel="MSE (Å²)", log_y=True
        )
        experiment.add_figure("val/error_vs_horizon", figure, self.global_step)
        b = self._first_val_batch
        experiment.add_figure(
            "val/predicted_vs_true",
            trajectory_traces(
                b["pred"], b["target"], b["history"], title="first validation window", dt_fs_per_step=step_fs
            ),
            self.global_step,
        )
