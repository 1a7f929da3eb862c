"""Forecast accuracy per horizon step: coordinate errors, Kabsch RMSD, ADE/FDE and covalent bond-length errors."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from asteroid.data.geometry import covalent_bond_mask, kabsch_rmsd


class ForecastMetrics(Metric):
    """Accuracy of forecast frames, per horizon step k = 0..P-1 and averaged over steps.

    Per step:
      mse:  mean over windows, real atoms and the 3 Cartesian components of (pred - target)^2, Angstrom^2. This is
            the convention of the published MD17 peers (GMN, EGNO, ESTAG): one third of the mean squared per-atom
            displacement.
      mae:  the same with |pred - target|, Angstrom.
      rmsd: mean over windows of the Kabsch RMSD of the frame, Angstrom.
      ade:  mean over windows and real atoms of the per-atom displacement error ||pred - target||, Angstrom.
      bond: mean over windows and bonds of |d_pred - d_true| for the covalent bonds of the last history frame.
    Means over atoms and bonds pool all windows, so a larger molecule in a mixed batch weighs more.
    compute() also gives mse_mean, mae_mean, rmsd_mean, bond_mean (means over steps), ADE (mean of ade over steps)
    and FDE (ade at the last step). States are sums, reduced across processes by summation.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, horizon: int, bond_scale: float = 1.2, **kwargs):
        super().__init__(**kwargs)
        self.horizon = horizon
        self.bond_scale = bond_scale
        for name in ("sq_err", "abs_err", "disp_err", "rmsd", "bond_err"):
            self.add_state(name, torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("n_atoms", "n_windows", "n_bonds"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, z: torch.Tensor, reference: torch.Tensor
    ) -> None:
        """pred, target: (B, P, N, 3) Angstrom; mask, z: (B, N); reference: (B, N, 3), the last history frame."""
        B, P, N, _ = pred.shape
        if P != self.horizon or target.shape != pred.shape:
            raise ValueError(
                f"expected pred and target of shape (B, {self.horizon}, N, 3), "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if mask.shape != (B, N) or z.shape != (B, N) or reference.shape != (B, N, 3):
            raise ValueError(
                f"mask, z, reference must be ({B}, {N}), ({B}, {N}), ({B}, {N}, 3), got "
                f"{tuple(mask.shape)}, {tuple(z.shape)}, {tuple(reference.shape)}"
            )
        mask = mask.bool()
        pred, target = pred.double(), target.double()
        err = torch.where(mask[:, None, :, None], pred - target, 0.0)  # (B, P, N, 3)
        self.sq_err += err.square().sum((0, 2, 3))
        self.abs_err += err.abs().sum((0, 2, 3))
        self.disp_err += err.norm(dim=-1).sum((0, 2))
        self.rmsd += kabsch_rmsd(pred, target, mask[:, None, :].expand(B, P, N)).sum(0)
        b, i, j = covalent_bond_mask(z, reference, mask, self.bond_scale).nonzero(as_tuple=True)  # (E,) each
        bond_pred = (pred[b, :, i] - pred[b, :, j]).norm(dim=-1)  # (E, P)
        bond_true = (target[b, :, i] - target[b, :, j]).norm(dim=-1)
        self.bond_err += (bond_pred - bond_true).abs().sum(0)
        self.n_atoms += mask.sum()
        self.n_windows += B
        self.n_bonds += len(b)

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-step (P,) tensors mse, mae, rmsd, ade, bond and scalars mse_mean, mae_mean, rmsd_mean, ADE, FDE,
        bond_mean. bond is NaN when no window had a bond."""
        per_step = {
            "mse": self.sq_err / (3 * self.n_atoms),
            "mae": self.abs_err / (3 * self.n_atoms),
            "rmsd": self.rmsd / self.n_windows,
            "ade": self.disp_err / self.n_atoms,
            "bond": self.bond_err / self.n_bonds,
        }
        means = {f"{name}_mean": per_step[name].mean() for name in ("mse", "mae", "rmsd", "bond")}
        return {**per_step, **means, "ADE": per_step["ade"].mean(), "FDE": per_step["ade"][-1]}


def with_step_axis(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ForecastMetrics.compute() with its per-step entries as (P,) even for P = 1 (torchmetrics squeezes to 0-d)."""
    return {
        name: value.reshape(-1) if name in ("mse", "mae", "rmsd", "ade", "bond") else value
        for name, value in values.items()
    }


class SpreadSkill(Metric):
    """Calibration of an ensemble of sampled forecasts, per horizon step.

    update(draws (K, B, P, N, 3), target (B, P, N, 3), mask (B, N)). compute() gives, per step (P,): "spread", the
    RMS over windows, real atoms and components of the draws' unbiased standard deviation; "rmse", the RMS error of
    the draws' mean; "ratio" = sqrt((K + 1) / K) spread / rmse, which is 1 for draws as spread as the truth is from
    them (below 1: overconfident, above: underconfident). Angstrom.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, horizon: int):
        super().__init__()
        self.add_state("variance", torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("squared_error", torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("draws", torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")

    def update(self, draws: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        real = mask[:, None, :, None].to(torch.float64)  # (B, 1, N, 1)
        draws = draws.double()
        self.variance += (draws.var(dim=0) * real).sum((0, 2, 3))
        self.squared_error += ((draws.mean(dim=0) - target.double()).square() * real).sum((0, 2, 3))
        self.count += 3 * real.sum()
        self.draws = torch.maximum(
            self.draws, torch.tensor(float(len(draws)), dtype=torch.float64, device=self.draws.device)
        )

    def compute(self) -> dict[str, torch.Tensor]:
        spread = (self.variance / self.count).sqrt()
        rmse = (self.squared_error / self.count).sqrt()
        return {"spread": spread, "rmse": rmse, "ratio": ((self.draws + 1) / self.draws).sqrt() * spread / rmse}
