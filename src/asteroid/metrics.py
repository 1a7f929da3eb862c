"""Forecast accuracy per horizon step: coordinate errors, Kabsch RMSD, ADE/FDE and covalent bond-length errors."""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torchmetrics import Metric

COVALENT_RADII = torch.tensor(covalent_radii, dtype=torch.float64)  # (119,) Angstrom, indexed by atomic number


def kabsch_rmsd(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMSD between two structures after optimal superposition (Kabsch).

    pred, target: (..., N, 3); mask: (..., N) bool, atoms where it is False (padding) are ignored whatever their
    values. pred is superposed onto target by a translation and a proper rotation: a reflection is excluded, since
    the mirror image of a chiral structure is a different structure. Computed in float64, returned as (...) in
    pred's dtype; 0 where no atom is real, NaN where a real atom has a non-finite coordinate.
    """
    real = mask.unsqueeze(-1)  # (..., N, 1)
    n_real = real.sum(-2, keepdim=True).clamp(min=1)  # (..., 1, 1)
    P = torch.where(real, pred.double(), 0.0)
    Q = torch.where(real, target.double(), 0.0)
    P = torch.where(real, P - P.sum(-2, keepdim=True) / n_real, 0.0)
    Q = torch.where(real, Q - Q.sum(-2, keepdim=True) / n_real, 0.0)
    H = P.transpose(-1, -2) @ Q  # (..., 3, 3) covariance
    # SVD raises on non-finite input; a diverged forecast must give NaN, not stop the evaluation
    finite = torch.isfinite(H).all(-1).all(-1)  # (...)
    U, _, Vh = torch.linalg.svd(torch.where(finite[..., None, None], H, 0.0))
    # when the best orthogonal map is a reflection, flip the axis of the smallest singular value
    proper = torch.linalg.det(U) * torch.linalg.det(Vh) > 0
    flip = torch.ones_like(U[..., 0, :])  # (..., 3)
    flip[..., -1] = torch.where(proper, 1.0, -1.0)
    rotation = (U * flip.unsqueeze(-2)) @ Vh  # rows: P @ rotation ~ Q
    sq_dev = (P @ rotation - Q).square().sum((-1, -2))  # (...)
    rmsd = (sq_dev / n_real[..., 0, 0]).sqrt()
    return torch.where(finite, rmsd, torch.nan).to(pred.dtype)


def covalent_bond_mask(z: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, scale: float = 1.2) -> torch.Tensor:
    """(..., N, N) bool: True at [i, j], i < j, for real atoms closer than scale * (r_i + r_j) (covalent radii).

    z: (..., N) atomic numbers, pos: (..., N, 3) Angstrom, mask: (..., N) bool (False = padding, any z allowed).
    """
    z = torch.where(mask, z, 0)  # padding may hold any number; keep the lookup in range
    radius = COVALENT_RADII.to(pos.device)[z]  # (..., N)
    cutoff = scale * (radius.unsqueeze(-1) + radius.unsqueeze(-2))  # (..., N, N)
    pos = pos.double()
    dist = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")  # (..., N, N)
    n_atoms = z.shape[-1]
    upper = torch.ones(n_atoms, n_atoms, dtype=torch.bool, device=pos.device).triu(1)
    both_real = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return (dist < cutoff) & both_real & upper


def covalent_bonds(z, pos, scale: float = 1.2) -> torch.Tensor:
    """(2, E) int64 atom pairs (i < j) closer than scale * (r_i + r_j), for z (N,) and pos (N, 3) Angstrom."""
    z, pos = torch.as_tensor(z), torch.as_tensor(pos)
    every_atom = torch.ones_like(z, dtype=torch.bool)
    return covalent_bond_mask(z, pos, every_atom, scale).nonzero().T


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
