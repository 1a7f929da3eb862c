"""Bonded geometry by construction: every forecast frame is projected so that each covalent bond has the length a
small head predicts for it (the mean, or a draw from a learned distribution) and each 1-3 (angle) distance stays
within the range the training frames visit.

Why predicted lengths: bond lengths are invariants, so their conditional mean is not blurred the way coordinates
are (the mean position of a rotating hydrogen lies inside its circle: MSE forecasts shorten O-H by 0.02 A), and a
learned spread restores the stretch vibrations that averaging removes. Projecting onto fixed lengths instead keeps
rollouts intact but freezes them (0.004 A/frame against the data's 0.124, issue 15).
"""

from __future__ import annotations

import math

import torch
from ase.data import atomic_masses
from torch import Tensor, nn

from asteroid.errors import ConfigError, DataError
from asteroid.metrics import covalent_bonds
from asteroid.models.noise import factor_nll, lower_triangular


def bonded_pairs(z: Tensor, frame: Tensor) -> tuple[Tensor, int]:
    """(K, 2) atom pairs i < j: the E covalent bonds of `frame` (N, 3), then every 1-3 pair (two atoms bonded to a
    common third) that is not itself a bond; and E."""
    bonds = covalent_bonds(z, frame).T  # (E, 2)
    neighbours: list[set[int]] = [set() for _ in range(len(z))]
    for i, j in bonds.tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    bonded = {tuple(pair) for pair in bonds.tolist()}
    angle_pairs = sorted(
        {(min(i, k), max(i, k)) for around in neighbours for i in around for k in around if i != k} - bonded
    )
    return torch.cat([bonds, torch.tensor(angle_pairs, dtype=torch.int64).reshape(-1, 2)]), len(bonds)


# Over-relaxation of each Jacobi round: 1.5 took 40% fewer rounds than 1 to bring ethanol forecasts to 1e-3 A, with
# no round diverging (1.9 took 50% fewer, too close to 2, where the iteration stops converging).
RELAXATION = 1.5


class BondedGeometry(nn.Module):
    """Bond lengths predicted from the history, and the projection of frames onto them and the angle ranges.

    Empty (a no-op) until `fit` gives it a molecule; its buffers then travel in checkpoints, sized on loading. The
    length head reads, per bond, its atoms' types and its lengths over the history (in units of the bond's training
    mean and spread) and gives, per horizon step, the mean length and a Gaussian over the residuals about it, r = M eps
    from r_0 = 0 at the known last history frame, M lower triangular (`noise.lower_triangular`: each step's own
    scale and how it follows the steps before). A hydrogen's stretch decorrelates within a frame, a C=O or ring
    stretch oscillates over a few frames (aspirin's ring C-C: about 4 frames); independent draws put stretch power
    where the data have none (aspirin: 1.31x the temperature), and a first-order autoregression, which cannot
    oscillate, gave ring C-C steps 1.2-1.4x the data's (issue 15). The projection is Jacobi-style SHAKE: every
    pair off its target (a bond) or outside its range (a 1-3 pair) is moved back along its own axis, the correction
    shared by inverse mass and divided among the offending pairs that meet at an atom, so the centre of mass stays
    put; rounds repeat, checked every `check_every`, until every distance is within `tolerance` Angstrom or
    `max_iterations` have run. Corrections lie along interatomic vectors and lengths are invariants, so the result is
    E(3)-equivariant; it is plain tensor algebra, so gradients flow through it in training.
    """

    def __init__(
        self,
        history: int,
        horizon: int,
        hidden: int = 32,
        max_z: int = 100,
        tolerance: float = 1e-3,
        max_iterations: int = 200,
        check_every: int = 10,
    ):
        super().__init__()
        self.horizon = horizon
        self.tolerance, self.max_iterations, self.check_every = tolerance, max_iterations, check_every
        for name, dtype in (
            ("z", torch.int64),
            ("pairs", torch.int64),
            ("lower", torch.float32),
            ("upper", torch.float32),
            ("inverse_mass", torch.float32),
            ("length_mean", torch.float32),
            ("length_std", torch.float32),
        ):
            self.register_buffer(name, torch.zeros((0, 2) if name == "pairs" else (0,), dtype=dtype))
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.length_head = nn.Sequential(
            nn.Linear(hidden + history, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, horizon + horizon * (horizon + 1) // 2),
        )

    @property
    def fitted(self) -> bool:
        return len(self.z) > 0

    @property
    def n_bonds(self) -> int:
        """The first n_bonds pairs are the bonds (their statistics are length_mean, length_std), the rest 1-3 pairs."""
        return len(self.length_mean)

    @torch.no_grad()
    def fit(self, z: Tensor, frames: Tensor) -> None:
        """Pairs from the first of `frames` (T, N, 3) Angstrom (training frames of one molecule), ranges and bond
        statistics over all of them."""
        z = torch.as_tensor(z, dtype=torch.int64)
        frames = torch.as_tensor(frames, dtype=torch.float64)
        pairs, bonds = bonded_pairs(z, frames[0])
        if not len(pairs):
            raise DataError(
                f"model.bond_constraints: the training molecule (z = {z.tolist()}) has no covalent bond "
                "to keep; turn the constraints off"
            )
        lengths = (frames[:, pairs[:, 1]] - frames[:, pairs[:, 0]]).norm(dim=-1)  # (T, K)
        self.z, self.pairs = z, pairs
        self.lower, self.upper = lengths.min(0).values.float(), lengths.max(0).values.float()
        self.inverse_mass = 1.0 / torch.as_tensor(atomic_masses[z.numpy()], dtype=torch.float32)
        self.length_mean = lengths[:, :bonds].mean(0).float()
        self.length_std = lengths[:, :bonds].std(0).float().clamp_min(1e-4)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The buffers' sizes depend on the molecule: take them from the checkpoint.
        for name, buffer in self.named_buffers(recurse=False):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=buffer.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check(self, z: Tensor) -> None:
        """Refuse frames of another molecule than the one the geometry was fitted on; z (B, N)."""
        if self.fitted and (z.shape[-1] != len(self.z) or not (z == self.z.to(z.device)).all()):
            raise ConfigError(
                f"model.bond_constraints: the constraints were fitted on z = {self.z.tolist()}, but "
                f"the frames hold z = {z[0].tolist()}; bond constraints need one molecule"
            )

    def distances(self, frames: Tensor) -> Tensor:
        """(..., K) distance of every pair in frames (..., N, 3)."""
        return (frames[..., self.pairs[:, 1], :] - frames[..., self.pairs[:, 0], :]).norm(dim=-1)

    def predict_lengths(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """history (B, H, N, 3) -> each bond's mean length (B, P, E) Angstrom at each horizon step, and the factor
        (B, E, P, P) of its residual over the horizon, in units of the bond's training spread."""
        E, P = self.n_bonds, self.horizon
        past = (self.distances(history)[..., :E] - self.length_mean) / self.length_std  # (B, H, E)
        kinds = self.embed(self.z[self.pairs[:E, 0]]) + self.embed(self.z[self.pairs[:E, 1]])  # (E, C), symmetric
        features = torch.cat([kinds.expand(len(history), -1, -1), past.transpose(1, 2)], dim=-1)  # (B, E, C + H)
        mean, log_std, coupling = self.length_head(features).split([P, P, P * (P - 1) // 2], dim=-1)  # (B, E, ...)
        return self.length_mean + self.length_std * mean.transpose(1, 2), lower_triangular(log_std, coupling)

    def length_nll(self, history: Tensor, target: Tensor) -> Tensor:
        """Mean negative log-likelihood of the true bond lengths of target (B, P, N, 3) under the predicted
        Gaussian, in units of each bond's training spread."""
        mean, factor = self.predict_lengths(history)
        residual = (self.distances(target)[..., : self.n_bonds] - mean) / self.length_std  # (B, P, E)
        return factor_nll(residual.transpose(1, 2)[..., None], factor).mean() + 0.5 * math.log(2 * math.pi)

    def lengths(self, history: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B, P, E) bond lengths for the next P frames: the predicted means, or with sample=True one draw of the
        Gaussian about them, kept within the training range."""
        mean, factor = self.predict_lengths(history)
        if sample:
            eps = torch.randn(factor.shape[:-1], generator=generator, device=mean.device, dtype=mean.dtype)
            residual = (factor @ eps[..., None])[..., 0]  # (B, E, P)
            mean = mean + self.length_std * residual.transpose(1, 2)
        E = self.n_bonds
        return torch.minimum(torch.maximum(mean, self.lower[:E]), self.upper[:E])

    def violation(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(...) largest distance off its target (bonds, when lengths (..., E) are given) or outside its range,
        Angstrom, of frames (..., N, 3)."""
        lower, upper = self._targets(frames, lengths)
        distances = self.distances(frames)
        return torch.maximum(lower - distances, distances - upper).clamp_min(0).amax(-1)

    def _targets(self, frames: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        lower, upper = self.lower.expand(*frames.shape[:-2], -1), self.upper.expand(*frames.shape[:-2], -1)
        if lengths is None:
            return lower, upper
        return (
            torch.cat([lengths, lower[..., self.n_bonds :]], -1),
            torch.cat([lengths, upper[..., self.n_bonds :]], -1),
        )

    def forward(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """frames (..., N, 3) Angstrom -> the same with every bond at `lengths` (..., E) (when given) and every pair
        within its training range; unchanged when not fitted."""
        if not self.fitted:
            return frames
        lower, upper = self._targets(frames, lengths)
        i, j = self.pairs[:, 0], self.pairs[:, 1]
        share_i = self.inverse_mass[i] / (self.inverse_mass[i] + self.inverse_mass[j])  # (K,)
        # frames stop moving once within tolerance, so a frame's result does not depend on the others in its batch
        moving = torch.ones(frames.shape[:-2], dtype=frames.dtype, device=frames.device)  # (...)
        for iteration in range(1, self.max_iterations + 1):
            bond = frames[..., j, :] - frames[..., i, :]  # (..., K, 3)
            length = bond.norm(dim=-1).clamp_min(1e-6)  # (..., K)
            wanted = torch.minimum(torch.maximum(length, lower), upper)
            # pairs off target that each atom takes part in; a pair's correction is divided by the larger count of
            # its two atoms, so that both move by the same momentum (the centre of mass stays put)
            active = (wanted != length).to(frames.dtype)
            per_atom = torch.zeros(*frames.shape[:-1], device=frames.device, dtype=frames.dtype)
            per_atom = per_atom.index_add(-1, i, active).index_add(-1, j, active)  # (..., N)
            shared = torch.maximum(per_atom[..., i], per_atom[..., j]).clamp_min(1)  # (..., K)
            gap = RELAXATION * (length - wanted) / (length * shared) * moving[..., None]  # (..., K)
            step = bond * gap[..., None]  # (..., K, 3): closes the gap, moving i toward j
            move = torch.zeros_like(frames).index_add(-2, i, step * share_i[:, None])
            frames = frames + move.index_add(-2, j, -step * (1 - share_i)[:, None])
            if iteration % self.check_every == 0:
                moving = moving * (self.violation(frames, lengths) > self.tolerance)
                if not moving.any():
                    break
        return frames
