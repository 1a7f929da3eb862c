"""The contract every forecaster (ASTEROID and the baselines) follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from asteroid.data.geometry import covalent_bond_mask
from asteroid.errors import ConfigError, DataError
from asteroid.models.bonded import BondedGeometry, BondProjection, plausible_geometry

if TYPE_CHECKING:
    from asteroid.models.bonded import TransferableBondLengths
    from asteroid.models.noise import GaussMarkovNoise


@dataclass
class Forecast:
    """What a forecaster's forward returns: pred (B, P, N, 3) Angstrom absolute coordinates, and its auxiliary training
    losses {name: scalar tensor} (empty when it has none; each model says whether they are weighted)."""

    pred: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)


def scheduled_frame(true_frame: Tensor, predicted_frame: Tensor, sampling_prob: float) -> Tensor:
    """Scheduled sampling: per window, the model's own prediction with probability sampling_prob, else the truth."""
    if sampling_prob <= 0.0:
        return true_frame
    shape = (true_frame.shape[0],) + (1,) * (true_frame.dim() - 1)
    own = torch.rand(shape, device=true_frame.device) < sampling_prob
    return torch.where(own, predicted_frame, true_frame)


class ForecastModel(nn.Module):
    """Base of every forecaster: H history frames in, P future frames out.

    Subclasses implement
    ``forward(history, z, mask, target=None, sampling_prob=0.0, box=None) -> Forecast`` with

    - history (B, H, N, 3) Angstrom, z (B, N) int64 atomic numbers (0 = padding),
      mask (B, N) bool (False = padding atom, which must not influence real atoms);
    - target (B, P, N, 3) Angstrom in training (teacher forcing, auxiliary losses),
      None at inference;
    - sampling_prob: probability that an autoregressive step is fed the model's own
      previous prediction instead of the true previous frame (scheduled sampling);
    - box (B, 3, 3) periodic cell vectors as rows (Angstrom) of each window's last
      history frame, or None for open boundaries. Coordinates are unwrapped (continuous
      in time), and the cell is taken as constant over the window and its forecast.

    and return a `Forecast` (the coordinates, and the auxiliary losses of training).
    """

    def __init__(self, history: int, horizon: int):
        super().__init__()
        if history < 1 or horizon < 1:
            raise ConfigError(f"history and horizon must be >= 1, got history={history}, horizon={horizon}")
        self.history = history
        self.horizon = horizon
        # RMS displacement of each horizon step from the last history frame (Angstrom),
        # fitted on the training split; a buffer so that checkpoints carry it.
        self.register_buffer("displacement_scale", torch.ones(horizon))
        # Optional parts the training module attaches (`model.stochastic`, `model.bond_constraints`): a learned
        # distribution around the forecast and the projection onto the training data's bond and angle ranges, or, in
        # a model for many molecules, the bond lengths read from each molecule (`model.transferable_bonds`).
        self.noise: GaussMarkovNoise | None = None
        self.bonded: BondedGeometry | None = None
        self.bond_head: TransferableBondLengths | None = None

    @property
    def imposes_bond_lengths(self) -> bool:
        """Whether forecasts go onto predicted bond lengths: a fitted bond table's, or a transferable head's."""
        return (self.bonded is not None and self.bonded.fitted) or self.bond_head is not None

    def check_inputs(self, history: Tensor, z: Tensor, target: Tensor | None = None, max_z: int | None = None) -> None:
        """The checks every forward starts with: history length, target shape, atomic numbers within max_z."""
        B, H, N, _ = history.shape
        if H != self.history:
            raise ValueError(f"model expects {self.history} history frames, got {H}")
        if target is not None and target.shape != (B, self.horizon, N, 3):
            raise ValueError(f"target must have shape {(B, self.horizon, N, 3)}, got {tuple(target.shape)}")
        # not while compiling: reading a value out is a graph break (`rollout` checks z before its first forecast)
        if max_z is not None and not torch.compiler.is_compiling() and int(z.max()) > max_z:
            raise DataError(f"model: atomic number {int(z.max())} exceeds max_z={max_z}")

    def set_displacement_scale(self, scale: Tensor) -> None:
        """Store the per-horizon-step RMS displacement (P,) in Angstrom fitted on the training split."""
        if scale.shape != (self.horizon,):
            raise ValueError(f"displacement scale must have shape ({self.horizon},), got {tuple(scale.shape)}")
        bad = ~torch.isfinite(scale) | (scale <= 0)
        if bad.any():
            step = int(bad.nonzero()[0]) + 1
            raise DataError(
                f"training windows: RMS displacement of horizon step {step} is {float(scale[step - 1])} Angstrom; "
                "the frames do not move (or contain NaN), so there is nothing to forecast"
            )
        self.displacement_scale.copy_(scale)

    @staticmethod
    def center(history: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Centre every frame on the centroid of the last history frame's real atoms.

        history (B, H, N, 3), mask (B, N) -> (centred history (B, H, N, 3), centroid (B, 1, 1, 3)).
        Padded atoms are zeroed first so whatever the padding holds (even NaN) cannot leak.
        """
        atom_mask = mask[:, None, :, None]  # (B, 1, N, 1)
        history = history.masked_fill(~atom_mask, 0.0)
        count = mask.sum(dim=1).clamp(min=1).to(history.dtype)  # (B,)
        centroid = history[:, -1].sum(dim=1) / count[:, None]  # (B, 3)
        centroid = centroid[:, None, None, :]  # (B, 1, 1, 3)
        return history - centroid, centroid

    def displace(self, history: Tensor, output: Tensor) -> Tensor:
        """Absolute prediction from network outputs in displacement-scale units.

        history (B, H, N, 3), output (B, P, N, 3) -> last history frame + displacement_scale[k] * output[:, k].
        """
        return history[:, -1:] + self.displacement_scale[None, :, None, None] * output

    def constrain(
        self, frames: Tensor, z: Tensor, history: Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """frames (B, P, N, 3) projected onto the bond lengths predicted from history (B, H, N, 3), drawn when
        sample=True, and the angle ranges, when the model has a bonded geometry (else unchanged)."""
        lengths = self._bond_lengths(z, history, sample, generator)
        return frames if lengths is None else self.bonded(frames, lengths)

    def _bond_lengths(
        self, z: Tensor, history: Tensor, sample: bool, generator, geometry: BondProjection | None = None
    ) -> Tensor | None:
        """(B, P, E) bond lengths for the frames after history (drawn when sample=True): from the fitted bond table,
        or from the transferable head for the bonds of `geometry` (one molecule's); None without either."""
        if self.bonded is not None and self.bonded.fitted:
            self.bonded.check(z)
            return self.bonded.lengths(history, sample, generator)
        if self.bond_head is not None and geometry is not None:
            return self.bond_head.lengths(history, z, geometry, sample, generator)
        return None

    def propose(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        box: Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
        geometry: BondProjection | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The next P frames (B, P, N, 3) after history (B, H, N, 3) before the bonded projection: the forecast
        mean, or with sample=True a draw from the learned distribution around it (the mean for a model without one);
        and the bond lengths (B, P, E) the projection is to give them (drawn too when sampling), None for a model
        without a bonded geometry. A rollout adjusts the frames (rigid motion, temperature) before projecting. A
        model with a transferable bond head gives the lengths of the bonds of `geometry`, the molecule's
        `plausible_geometry` (windows of one molecule), when given."""
        pred = self(history, z, mask, box=box).pred
        sample = sample and self.noise is not None
        if sample:
            pred = self.noise.sample(history, z, pred, self.displacement_scale, generator)
        return pred, self._bond_lengths(z, history, sample, generator, geometry)

    def generate(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        box: Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`propose`'s frames (B, P, N, 3), projected onto its bond lengths and the angle ranges: a bond table's, or
        with a transferable bond head each molecule's of the batch in turn."""
        pred, lengths = self.propose(history, z, mask, box, sample, generator)
        if lengths is not None:
            return self.bonded(pred, lengths)
        if self.bond_head is None:
            return pred
        return self._project_each_molecule(pred, history, z, mask, sample, generator)

    def _project_each_molecule(self, pred, history, z, mask, sample, generator) -> Tensor:
        """pred (B, P, N, 3) with each window's frames projected onto the bond lengths the transferable head predicts
        and the ranges of `plausible_geometry`, windows of the same atoms and bonds taken together (a padded batch
        may hold several molecules)."""
        B, N = z.shape
        bonds = covalent_bond_mask(z, history[:, 0], mask).reshape(B, -1)  # (B, N N)
        kinds, molecule = torch.unique(torch.cat([z * mask, bonds], dim=-1), dim=0, return_inverse=True)
        pred = pred.clone()
        for m in range(len(kinds)):
            windows = (molecule == m).nonzero()[:, 0]
            if not bonds[windows[0]].any():  # single atoms: nothing to project
                continue
            atoms = mask[windows[0]].nonzero()[:, 0]
            past = history[windows][:, :, atoms]  # (W, H, A, 3)
            geometry = plausible_geometry(z[windows[0], atoms], past)
            lengths = self.bond_head.lengths(past, z[windows][:, atoms], geometry, sample, generator)
            pred[windows[:, None], :, atoms] = geometry(pred[windows][:, :, atoms], lengths).transpose(1, 2)
        return pred
