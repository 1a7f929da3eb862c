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

from asteroid.data.geometry import covalent_bond_mask, covalent_bonds
from asteroid.errors import ConfigError, DataError
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


# Levenberg damping of the Newton system, relative to its mean diagonal: keeps a step finite where the bonds' axes are
# nearly dependent (a forecast far off), and costs nothing measurable elsewhere.
DAMPING = 1e-4
# Largest move of an atom per Newton iteration, in units of the largest gap: far from the constraints the
# linearisation may ask for moves many times the gap, toward another branch of the solutions.
STEP_LIMIT = 2.0
# Jacobi rounds on the 1-3 pairs between Newton solves of the bonds (over-relaxed by 1.5: 40% fewer rounds than 1; a
# pair pushed back past its bound also bounces off it, as in an elastic collision), how often the two alternate at
# most, and how far outside its range a 1-3 pair may end (Angstrom; the ranges are guard rails, the bonds exact).
RELAXATION, RANGE_ROUNDS, ALTERNATIONS, RANGE_TOLERANCE = 1.5, 4, 25, 1e-3
# `BondProjection._settle`: its Newton iterations, and the weight of a 1-3 pair's push (its multiplier, in units of
# the distance it moves the pair) against the pair's distance from its bound in deciding whether it stays in the
# system. On 300 forecasts of a batch-1 rollout each of the shipped ethanol and aspirin models, with weight 0.1, 3 / 4
# / 6 iterations left 0.3 / 0.0 / 0.0% of ethanol's frames outside tolerance and 5.7 / 0.8 / 0.1% of aspirin's, and 4
# made the faster compiled rollout of both (the frames left go through the alternation); with weight 1, 6
# iterations left 0.4% and 5.6%, with 10, 8% and 21% (a pair held too long over-constrains a ring).
SETTLE_ITERATIONS, RELEASE_WEIGHT = 4, 0.1
# `_settle` and its check run where its LU over all K pairs costs at most this much (frames x K^3); elsewhere the
# alternation alone, which solves the E bonds alone in most frames, is the cheaper. Milliseconds a whole forecast,
# rollouts compiled, one thread, settle first (six iterations then) against the alternation alone (ethanol K = 21,
# aspirin 53): ethanol 8 frames 1.8 against 3.8, 64 frames 6.9 against 10.4; aspirin 8 frames 5.1 against 5.7, 64
# frames 28 against 18; and ethanol's projection of 2048 frames, eager, 84 against 32.
SETTLE_MAX_WORK = 2e6
# Where the fixed rounds do not run (batched) in a compiled step, the Newton iterations of the bonds alone that every
# frame takes in their place (`_bond_rounds`), and the conjugate-gradient iterations each solves with. On a batch-256
# forecast of the shipped ethanol and aspirin models (2048 frames) 2 rounds of 8 left no frame with a bond off (2 of
# 6: 0 and 2; 2 of 4: 0 and 1639, aspirin's rings coupling its bonds more; 3 of 4: 0 and 0, in more time); the frames
# left outside a 1-3 range go on eagerly.
BOND_ROUNDS, CG_ITERATIONS = 2, 8
# `settle`'s frame is kept only where no atom moved more than this many times the largest gap it started with (the
# rest go through the alternation): with release weight 1, 3 of aspirin's 2400 converged frames had found a solution
# twice as far as the alternation's (which moves atoms up to 1.6 times the gap in 99.9% of frames). With the weight
# of 0.1 none did on those forecasts, and the guard sends 0.2% / 0.3% of ethanol's / aspirin's frames, all within
# 0.011 A of the alternation's result, through it needlessly: a cheap safeguard.
SETTLE_MOVE_LIMIT = 1.5


# How far (relative) a bond and a 1-3 distance stray from their mean over 8 frames 5 fs apart, at most, in 82 of the
# 83 pretraining trajectories (GFN2-xTB, 500 K; malonaldehyde's proton hops between its oxygens): 0.160 and 0.186,
# rounded up (the first 36 gave 0.164 and 0.192; the 30 added for the 113-molecule model reach no further: the
# largest stretch over a window's 8 history and 8 next frames about the history's mean, 0.164 and 0.204 for them,
# 0.162 and 0.214 for the 82). What `plausible_geometry` allows a model without a bond table of its own.
PLAUSIBLE_BOND_STRETCH, PLAUSIBLE_ANGLE_STRETCH = 0.17, 0.20


def plausible_geometry(z: Tensor, history: Tensor) -> BondProjection:
    """Ranges for a molecule no bond table was fitted to (a transferable model's forecasts): its bonds and 1-3 pairs
    from the first frame of history (B, H, N, 3) (windows of one molecule, z (N,)), each allowed
    PLAUSIBLE_BOND_STRETCH / PLAUSIBLE_ANGLE_STRETCH about its mean over each window's own H frames (ranges (B, 1, K),
    so that a window's ranges do not depend on the others in its batch; the means are kept as `mean`). Projecting onto
    them
    (`BondProjection.forward` without lengths) moves only what leaves them: a hydroxyl hydrogen driven into its
    oxygen, say, not the vibrations; with lengths (`TransferableBondLengths`) the bonds go to those."""
    geometry = BondProjection()
    geometry.set_molecule(z.cpu(), history[0, 0].detach().cpu())
    geometry.to(history.device, history.dtype)
    geometry.mean = geometry.distances(history).mean(1, keepdim=True)  # (B, 1, K)
    stretch = torch.full_like(geometry.mean, PLAUSIBLE_ANGLE_STRETCH)
    stretch[..., : geometry.n_bonds] = PLAUSIBLE_BOND_STRETCH
    geometry.lower, geometry.upper = geometry.mean * (1 - stretch), geometry.mean * (1 + stretch)
    return geometry


# The transferable head's unit of bond stretch (Angstrom), about the spread of a C-H or C-C bond at 500 K: what it
# reads and gives is then of order one for every element pair.
STRETCH_UNIT = 0.03
# The bond lengths of H/C/N/O molecules lie within about 1.25 +- 0.3 A: the head reads a bond's mean length so.
TYPICAL_LENGTH, LENGTH_SPAN = 1.25, 0.3


class TransferableBondLengths(nn.Module):
    """The bond-length head of a model for many molecules (issue 26): BondedGeometry's distribution (a mean length
    per horizon step and a Gaussian over the residuals, `noise.lower_triangular`), but read from the molecule at
    run time instead of a bond table fitted to one: each bond's atom types, its mean length over the history and its
    lengths over the history about that mean, in STRETCH_UNIT. Bonds are found in each window's first history frame
    (covalent radii), so a padded batch of several molecules is one call; where a forecast is projected onto the
    lengths, the molecule's `plausible_geometry` gives the bonds' order and the ranges."""

    def __init__(self, history: int, horizon: int, hidden: int = 32, max_z: int = 100):
        super().__init__()
        self.horizon = horizon
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.length_head = nn.Sequential(
            nn.Linear(hidden + history + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, horizon + horizon * (horizon + 1) // 2),
        )

    @staticmethod
    def bonds(z: Tensor, history: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The bonds of every window of history (B, H, N, 3), z and mask (B, N): window (E,) and atoms (E, 2), i < j."""
        window, i, j = covalent_bond_mask(z, history[:, 0], mask).nonzero(as_tuple=True)
        return window, torch.stack([i, j], dim=-1)

    def predict(
        self, history: Tensor, z: Tensor, window: Tensor, atoms: Tensor, centre: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Bonds (window (E,), atoms (E, 2)) of history (B, H, N, 3) -> each bond's mean length (E, P) Angstrom at each
        horizon step and the factor (E, P, P) of its residual over the horizon, in STRETCH_UNIT. centre (E, 1): the
        length each bond's history is read about, its mean over the history when not given."""
        P = self.horizon
        past = (history[window, :, atoms[:, 1]] - history[window, :, atoms[:, 0]]).norm(dim=-1)  # (E, H)
        centre = past.mean(-1, keepdim=True) if centre is None else centre  # (E, 1)
        kinds = self.embed(z[window, atoms[:, 0]]) + self.embed(z[window, atoms[:, 1]])  # (E, C), symmetric
        features = torch.cat([kinds, (past - centre) / STRETCH_UNIT, (centre - TYPICAL_LENGTH) / LENGTH_SPAN], -1)
        mean, log_std, coupling = self.length_head(features).split([P, P, P * (P - 1) // 2], dim=-1)
        return centre + STRETCH_UNIT * mean, lower_triangular(log_std, coupling)

    def nll(self, history: Tensor, target: Tensor, z: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood of the true bond lengths of target (B, P, N, 3) under the predicted Gaussian,
        in STRETCH_UNIT, over the bonds of every window."""
        window, atoms = self.bonds(z, history, mask)
        mean, factor = self.predict(history, z, window, atoms)
        true = (target[window, :, atoms[:, 1]] - target[window, :, atoms[:, 0]]).norm(dim=-1)  # (E, P)
        residual = (true - mean) / STRETCH_UNIT
        return factor_nll(residual[..., None], factor).mean() + 0.5 * math.log(2 * math.pi)

    def lengths(
        self,
        history: Tensor,
        z: Tensor,
        geometry: BondProjection,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, P, E) lengths of the bonds of `geometry` (the molecule's `plausible_geometry`) for the P frames after
        history (B, H, N, 3): the predicted means, or with sample=True one draw about them, kept within its ranges.
        Each bond's history is read about its mean over the history `geometry` was made from: in a rollout, the
        starting history. About the rollout's own history instead, a length's small errors added up from forecast to
        forecast (a zero-shot ethanol's C-O went from 1.42 to 1.24 A within 2000 frames)."""
        B, E = len(history), geometry.n_bonds
        window = torch.arange(B, device=history.device).repeat_interleave(E)
        centre = geometry.mean[:, 0, :E].reshape(-1, 1)  # (B E, 1)
        mean, factor = self.predict(
            history, z, window, geometry.pairs[:E].repeat(B, 1), centre
        )  # (B E, P), (B E, P, P)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + STRETCH_UNIT * (factor @ eps[..., None])[..., 0]
        lengths = mean.reshape(B, E, -1).transpose(1, 2)  # (B, P, E)
        return torch.minimum(torch.maximum(lengths, geometry.lower[..., :E]), geometry.upper[..., :E])


def beyond(distances: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """(...) the largest of pair distances (..., K) outside its range [lower, upper] (..., K), 0 within."""
    return torch.maximum(lower - distances, distances - upper).clamp_min(0).amax(-1)


def conjugate_gradients(system: Tensor, rhs: Tensor, iterations: int) -> Tensor:
    """(K, F) solutions of F symmetric positive definite systems (K, K, F) with right-hand sides rhs (K, F), after a
    fixed number of conjugate-gradient iterations from zero, frames last (element-wise along them, no value read
    back)."""
    solution, residual = torch.zeros_like(rhs), rhs
    direction, norm = rhs, rhs.square().sum(0)  # (K, F), (F,)
    for _ in range(iterations):
        image = (system * direction[None]).sum(1)  # (K, F)
        step = norm / (direction * image).sum(0).clamp_min(1e-30)
        solution, residual = solution + step * direction, residual - step * image
        new_norm = residual.square().sum(0)
        direction, norm = residual + (new_norm / norm.clamp_min(1e-30)) * direction, new_norm
    return solution


class BondProjection(nn.Module):
    """A molecule's bonds and 1-3 pairs and the projection of frames onto bond lengths and 1-3 ranges.

    Empty (a no-op) until given a molecule (`set_molecule`); its buffers are sized by the molecule (and travel in
    checkpoints as `BondedGeometry`'s). The projection (issue 25) solves the bonds directly, the topology being fixed:
    with S (E, N) the bonds' incidence (+1 at j, -1 at i) and W the inverse masses, each Newton iteration moves the
    atoms by -W S^T (lambda u), u (E, 3) the bonds' current unit vectors and lambda from the E x E system
    (C o u u^T) lambda = gap, C = S W S^T (LINCS's coupling matrix, a constant of the molecule), by Cholesky. The
    bonds of a molecule are independent constraints, so one or two iterations reach 1e-4 Angstrom on rollout
    forecasts. The 1-3 ranges are inequalities whose active sets are redundant in rings: a pair outside its range is
    pushed back by Jacobi rounds, alternating with the bond solve until both hold (most frames have no pair outside
    and take the bond solve alone: 92% of ethanol's, 86% of aspirin's). That alternation is a loop of small
    operations whose number depends on the frame; where few frames are projected at once, `_settle` comes first:
    a fixed number of semi-smooth Newton iterations over the bonds and the 1-3 pairs together (a primal-dual active
    set that releases a pair once its push turns the wrong way; one that only grew cycled or over-constrained
    aspirin's rings), the same operations for every frame, so that a rollout compiles it with the network
    (`models.rollout.forecast_step`); the alternation takes the frames it leaves off from the start. Where many
    frames are projected at once, the bonds of every frame are solved first, in a compiled step by a fixed number of
    Newton iterations (`_bond_rounds`, conjugate gradients for the solve), and the frames then outside a 1-3 range
    take `_settle`. The
    Jacobi-style SHAKE on every pair before took about 100 rounds to 1e-3 and cost twice the network. The corrections
    are internal forces along interatomic axes, shared by inverse mass: the centre of mass stays put, no angular
    momentum is added (to first order) and the result is E(3)-equivariant. The ranges `lower`, `upper` are (K,), or
    (B, 1, K) for B windows of forecast frames (B, P, N, 3) each with its own (`plausible_geometry`).
    """

    def __init__(self, tolerance: float = 1e-4, max_iterations: int = 12):
        super().__init__()
        self.tolerance, self.max_iterations = tolerance, max_iterations
        self._bonds = 0
        self.mean: Tensor | None = None  # each pair's mean distance over the frames it was made from, when kept
        for name, dtype in (
            ("z", torch.int64),
            ("pairs", torch.int64),
            ("lower", torch.float32),
            ("upper", torch.float32),
            ("inverse_mass", torch.float32),
        ):
            self.register_buffer(name, torch.zeros((0, 2) if name == "pairs" else (0,), dtype=dtype))

    @property
    def fitted(self) -> bool:
        return len(self.pairs) > 0

    @property
    def n_bonds(self) -> int:
        """The first n_bonds pairs are the bonds, the rest 1-3 pairs."""
        return self._bonds

    def set_molecule(self, z: Tensor, frame: Tensor) -> None:
        """The molecule of atomic numbers z (N,), its bonds and 1-3 pairs found in frame (N, 3) Angstrom."""
        self.z = torch.as_tensor(z, dtype=torch.int64)
        self.pairs, self._bonds = bonded_pairs(self.z, torch.as_tensor(frame, dtype=torch.float64))
        self.inverse_mass = 1.0 / torch.as_tensor(atomic_masses[self.z.numpy()], dtype=torch.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The buffers' sizes depend on the molecule: take them from the checkpoint.
        for name, buffer in self.named_buffers(recurse=False):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=buffer.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def distances(self, frames: Tensor) -> Tensor:
        """(..., K) distance of every pair in frames (..., N, 3)."""
        return (frames[..., self.pairs[:, 1], :] - frames[..., self.pairs[:, 0], :]).norm(dim=-1)

    def violation(self, frames: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(...) largest distance off its target (bonds, when lengths (..., E) are given) or outside its range,
        Angstrom, of frames (..., N, 3)."""
        return self._outside(frames, *self._targets(frames, lengths))

    def _targets(self, frames: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        lower, upper = self.lower.expand(*frames.shape[:-2], -1), self.upper.expand(*frames.shape[:-2], -1)
        if lengths is None:
            return lower, upper
        return (
            torch.cat([lengths, lower[..., self.n_bonds :]], -1),
            torch.cat([lengths, upper[..., self.n_bonds :]], -1),
        )

    def incidence(self) -> tuple[Tensor, Tensor]:
        """S (K, N), +1 at each pair's atom j and -1 at its atom i, and the coupling C = S W S^T (K, K), W the inverse
        masses (the mass-weighted overlap of two pairs' corrections: nonzero where they share an atom)."""
        K, N = len(self.pairs), len(self.z)
        rows = torch.arange(K, device=self.pairs.device)
        incidence = torch.zeros(K, N, dtype=self.inverse_mass.dtype, device=self.pairs.device)
        incidence[rows, self.pairs[:, 1]] = 1.0
        incidence[rows, self.pairs[:, 0]] = -1.0
        return incidence, (incidence * self.inverse_mass) @ incidence.T

    def forward(
        self, frames: Tensor, lengths: Tensor | None = None, settled: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """frames (..., N, 3) Angstrom -> the same with every bond at `lengths` (..., E) (when given; else at the
        nearest point of its training range) to `tolerance`, and every 1-3 pair within its training range to
        RANGE_TOLERANCE; unchanged when not fitted. settled: `settle(frames, lengths)`, where the caller has made it
        (a compiled rollout step).

        The value is `solve`'s. Its gradient (training) is that of the projection at the solution (the implicit
        function theorem, curvature left out): the frames' gradient less its part along the active constraints'
        normals, and a bond's target length receives what moves it. Training through the iterations instead gave
        gradients that spiked where an untrained forecast was far off the constraints (ethanol's validation MSE
        after 300 steps: 0.029 against 0.011), and training through a slower Jacobi relaxation taught the net to
        park its output 0.5 A off the constraints where only that relaxation maps it back (issue 25).
        """
        if not self.fitted:
            return frames
        lower, upper = self._targets(frames, lengths)  # (..., K)
        solution = self.solve(frames.detach(), lower.detach(), upper.detach(), settled)
        if not torch.is_grad_enabled() or not (frames.requires_grad or lower.requires_grad):
            return solution
        incidence, coupling = self.incidence()
        bond = incidence @ solution  # (..., K, 3)
        length = bond.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (..., K, 1)
        # active at the solution: the bonds, and the range pairs at a bound
        at_upper = length[..., 0] >= upper.detach() - 2 * self.tolerance
        active = (lower == upper) | at_upper | (length[..., 0] <= lower.detach() + 2 * self.tolerance)
        shift = frames - frames.detach()  # zero in value: the frames' change, in gradient
        goal = torch.where(at_upper, upper, lower)
        gap = torch.where(active, ((incidence @ shift) * bond / length).sum(-1) - (goal - goal.detach()), 0.0)
        return solution + shift - self._newton_move(gap, active, bond / length, coupling, incidence)[1]

    def _newton_move(self, gap: Tensor, active: Tensor, unit: Tensor, coupling: Tensor, incidence: Tensor):
        """The multipliers (..., K, 1) that close the active pairs' gaps (..., K) to first order, the pairs' unit
        vectors being unit (..., K, 3), and the move (..., N, 3) of the atoms they make."""
        pair = active[..., :, None] & active[..., None, :]  # (..., K, K)
        system = torch.where(pair, coupling * (unit @ unit.mT), torch.diag_embed((~active).to(unit.dtype)))
        damping = DAMPING * coupling.diagonal().mean() * torch.eye(len(coupling), device=unit.device)
        # J W J^T is positive semi-definite and damped: Cholesky, half the cost of a general solve
        multiplier = torch.cholesky_solve(gap[..., None], torch.linalg.cholesky_ex(system + damping)[0])
        return multiplier, (incidence * self.inverse_mass).T @ (multiplier * unit)

    @torch.no_grad()
    def solve(
        self, frames: Tensor, lower: Tensor, upper: Tensor, settled: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """frames (..., N, 3) with every pair distance within [lower, upper] (..., K) (bonds with a target length:
        lower = upper), bonds to `tolerance` and 1-3 pairs to RANGE_TOLERANCE (a bond with a range is taken to the
        nearest point of it): `settle`'s fixed rounds (or `settled`, what they gave where the caller has made them),
        and for the frames they leave off, the alternation of the bonds' Newton solve and Jacobi rounds on the 1-3
        pairs outside their range from the start, until within tolerance (the class docstring). Frames too many for
        the fixed rounds (SETTLE_MAX_WORK) have their bonds solved first (in `settle`'s compiled rounds, or here);
        those then outside a range take the fixed rounds from the start where they are few enough, the alternation
        where not. A frame's result does not depend on the others in its batch, except there through how many of
        them end outside a range, nor on whether the step was compiled, except batched through how its bonds were
        solved (both ways meet the tolerances)."""
        shape, K, E = frames.shape, lower.shape[-1], self.n_bonds
        frames, lower, upper = frames.reshape(-1, *shape[-2:]), lower.reshape(-1, K), upper.reshape(-1, K)
        settled, off = self._settle_and_check(frames, lower, upper) if settled is None else settled
        settled, off = settled.reshape(frames.shape), off.reshape(-1)  # (F, N, 3), (F,)
        if not off.any():
            return settled.reshape(shape)
        goal = self._goal(self.distances(frames), lower, upper)  # (F, E)
        incidence, coupling = self.incidence()
        bonds_only = incidence[:E], coupling[:E, :E]  # (E, N), (E, E)
        live = off.nonzero()[:, 0]  # (L,)
        if self._settles(len(frames)):
            result = torch.where(off[:, None, None], frames, settled)  # the frames settle left off start again
        else:
            # Too many frames for the fixed rounds (batched): the bonds first (where `settle` compiled their rounds,
            # this finds those solved), then the frames outside a 1-3 range take the fixed rounds from the start
            # where they are few enough (the alternation's tail of small subsets cost more than its first solve of
            # all: ethanol, 2048 frames), else the alternation goes on from the bonds' solution
            result = settled.clone()
            result[live] = self._solve_bonds(result[live], goal[live], *bonds_only)
            live = live[self._outside(result[live], lower[live], upper[live]) > RANGE_TOLERANCE]
            if self._settles(len(live)):
                settled, off = self._settle_and_check(frames[live], lower[live], upper[live])
                result[live] = torch.where(off[:, None, None], frames[live], settled)
                live = live[off]
            else:
                result[live] = self._push_into_range(result[live], lower[live, E:], upper[live, E:])
        for _ in range(ALTERNATIONS):
            if not len(live):
                break
            result[live] = self._solve_bonds(result[live], goal[live], *bonds_only)
            outside = self._outside(result[live], lower[live], upper[live]) > RANGE_TOLERANCE  # (L,)
            live = live[outside]
            if len(live):
                result[live] = self._push_into_range(result[live], lower[live, E:], upper[live, E:])
        else:
            result[live] = self._solve_bonds(result[live], goal[live], *bonds_only)
        return result.reshape(shape)

    def settle(self, frames: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frames (..., N, 3) after `_settle`'s fixed rounds toward the bond lengths (..., E) (or the nearest point
        of their range) and the 1-3 ranges (batched: BOND_ROUNDS iterations of the bonds alone where compiled, else
        nothing: `_settle_and_check`), and (...) which of them the rounds left off: the same operations whatever
        the frames, and no value read back, so that it compiles for fixed shapes (`models.rollout.forecast_step`);
        `forward` and `solve` take the pair as `settled` and finish the frames left off."""
        if not self.fitted:
            return frames, frames.new_zeros(frames.shape[:-2], dtype=torch.bool)
        lower, upper = self._targets(frames, lengths)
        flat, lower, upper = frames.reshape(-1, *frames.shape[-2:]), lower.flatten(0, -2), upper.flatten(0, -2)
        settled, off = self._settle_and_check(flat, lower, upper)
        return settled.reshape(frames.shape), off.reshape(frames.shape[:-2])

    def _settle_and_check(self, frames: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """`_settle` of frames (F, N, 3), and (F,) whether each ended outside tolerance or moved an atom further
        than SETTLE_MOVE_LIMIT times its largest gap (NaN counts as off). Where the fixed rounds do not run
        (SETTLE_MAX_WORK: batched), compiled: BOND_ROUNDS Newton iterations of the bonds alone instead, and (F,)
        whether each frame ended with a bond off its length or a 1-3 pair outside its range, so that a batched
        rollout solves the bonds of most frames in its one compiled call; eager: the frames as they are, all off,
        for `solve`'s Newton iterations with their Cholesky, each frame stopping once it is there, cost less there
        (ethanol's projection of 2048 frames 18.0 against 20.4 ms, aspirin's 68.0 against 79.6)."""
        settles = self._settles(len(frames))
        if not settles and not torch.compiler.is_compiling():
            return frames, torch.ones(len(frames), dtype=torch.bool, device=frames.device)
        before = self.distances(frames)  # (F, K)
        goal = self._goal(before, lower, upper)
        if not settles:
            solved = self._bond_rounds(frames, goal)
            bond_gap, range_gap = self._gaps(self.distances(solved), goal, lower, upper)
            return solved, ~((bond_gap <= self.tolerance) & (range_gap <= RANGE_TOLERANCE))
        settled = self._settle(frames, goal, lower, upper)
        bond_gap, range_gap = self._gaps(self.distances(settled), goal, lower, upper)
        moved = (settled - frames).norm(dim=-1).amax(-1)  # (F,)
        off = ~(
            (bond_gap <= self.tolerance)
            & (range_gap <= RANGE_TOLERANCE)
            & (moved <= SETTLE_MOVE_LIMIT * torch.maximum(*self._gaps(before, goal, lower, upper)))
        )
        return settled, off

    def _settles(self, frames: int) -> bool:
        """Whether the fixed rounds run on this many frames at once (SETTLE_MAX_WORK)."""
        return frames * len(self.pairs) ** 3 <= SETTLE_MAX_WORK

    def _goal(self, distances: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """(F, E) each bond's length, of the pair distances (F, K), or the nearest point of its range [lower, upper]
        (F, K)."""
        E = self.n_bonds
        return torch.minimum(torch.maximum(distances[:, :E], lower[:, :E]), upper[:, :E])

    def _settle(self, frames: Tensor, goal: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """frames (F, N, 3) after SETTLE_ITERATIONS semi-smooth Newton iterations (a primal-dual active set) toward the
        bonds at goal (F, E) and the 1-3 pairs within [lower, upper] (F, K): the bonds and the pairs at a bound in one
        system. The unknowns are each pair's total multiplier lambda, the atoms moving by -W S^T (lambda u0) along the
        pairs' axes in `frames` (u0, as SHAKE takes its directions from the unconstrained frame); a 1-3 pair is in the
        system while its distance plus RELEASE_WEIGHT C_kk lambda lies beyond its bound (with a hysteresis of
        RANGE_TOLERANCE once in), and otherwise its lambda is zero, so a pair held at a bound it no longer needs is
        released and its push undone (an active set that only grew had over-constrained aspirin's rings). The same
        operations whatever the frames; `solve` takes the frames it leaves off through the alternation from the
        start."""
        K, E = len(self.pairs), self.n_bonds
        incidence, coupling = self.incidence()  # (K, N), (K, K)
        low, high = torch.cat([goal, lower[:, E:]], -1), torch.cat([goal, upper[:, E:]], -1)  # (F, K)
        axes = incidence @ frames  # (F, K, 3)
        axes = axes / axes.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        spread = (incidence * self.inverse_mass).T  # (N, K): how a pair's multiplier moves the atoms
        reach = coupling.diagonal()  # (K,) Angstrom of its own distance per unit multiplier
        is_bond = torch.arange(K, device=frames.device) < E
        damping = DAMPING * reach.mean() * torch.eye(K, device=frames.device, dtype=frames.dtype)
        multiplier = frames.new_zeros(len(frames), K)
        at_high = at_low = torch.zeros_like(multiplier, dtype=torch.bool)
        for _ in range(SETTLE_ITERATIONS):
            pair = incidence @ (frames - spread @ (multiplier[..., None] * axes))  # (F, K, 3)
            distance = pair.norm(dim=-1).clamp_min(1e-6)  # (F, K)
            trial = distance + RELEASE_WEIGHT * reach * multiplier  # the push counts toward staying in the system
            # a pair held at a bound is released only once its push is clearly the wrong way (else it cycles)
            at_high = (trial > high) | (at_high & (trial > high - RANGE_TOLERANCE))
            at_low = (trial < low) | (at_low & (trial < low + RANGE_TOLERANCE))
            active = is_bond | at_high | at_low
            # -d distance / d multiplier; rows of the active pairs (the rest: identity, their multiplier set to 0)
            jacobian = coupling * ((pair / distance[..., None]) @ axes.mT)  # (F, K, K)
            released = torch.where(active, 0.0, multiplier)
            gap = distance - torch.where(at_high, high, low) + (jacobian @ released[..., None])[..., 0]
            both = active[..., :, None] & active[..., None, :]
            system = torch.where(both, jacobian, torch.diag_embed((~active).to(frames.dtype))) + damping
            factors, pivots, _ = torch.linalg.lu_factor_ex(system)  # singular: NaN, which `solve` refuses, not raise
            step = torch.linalg.lu_solve(factors, pivots, torch.where(active, gap, 0.0)[..., None])[..., 0]
            multiplier = torch.where(active, multiplier + step, 0.0)
        return frames - spread @ (multiplier[..., None] * axes)

    def _solve_bonds(self, frames: Tensor, lengths: Tensor, incidence: Tensor, coupling: Tensor) -> Tensor:
        """frames (F, N, 3) with every bond at lengths (F, E), to `tolerance`: Newton iterations; incidence (E, N)
        and coupling (E, E) are the bonds' part of `incidence()`."""
        active = torch.ones_like(lengths, dtype=torch.bool)
        live = torch.arange(len(frames), device=frames.device)
        for _ in range(self.max_iterations):
            bond = incidence @ frames[live]  # (L, E, 3)
            length = bond.norm(dim=-1).clamp_min(1e-6)  # (L, E)
            gap = length - lengths[live]
            moving = gap.abs().amax(-1) > self.tolerance  # (L,)
            if not moving.any():
                break
            live, bond, length, gap = live[moving], bond[moving], length[moving], gap[moving]
            _, move = self._newton_move(gap, active[live], bond / length[..., None], coupling, incidence)
            reach = move.norm(dim=-1).amax(-1, keepdim=True).clamp_min(1e-12)  # (L, 1)
            shrink = (STEP_LIMIT * gap.abs().amax(-1, keepdim=True) / reach).clamp(max=1.0)  # trust region
            frames[live] = frames[live] - move * shrink[..., None]
        return frames

    def _bond_rounds(self, frames: Tensor, lengths: Tensor) -> Tensor:
        """frames (F, N, 3) after BOND_ROUNDS Newton iterations toward the bonds at lengths (F, E), every frame
        alike (no value read back): `_solve_bonds`'s iterations, the system (C o u u^T) lambda = gap scaled to a unit
        diagonal and solved by CG_ITERATIONS of conjugate gradients (it is symmetric positive definite for bonds
        alone), element-wise with the frames last, so that compiled they run as loops along the frames: 2048 of
        ethanol's in 1.3 ms, aspirin's in 7.5. Cholesky's Newton steps pay per small matrix and compiled code reaches
        LAPACK for them through a fallback (three such rounds made a compiled ethanol step 71 ms, against 60 with
        LINCS's series expansion in their place); that expansion needed 16 terms in aspirin's rings (A's
        eigenvalues reach 0.79)."""
        E = self.n_bonds
        incidence, coupling = self.incidence()
        i, j = self.pairs[:E].unbind(-1)
        spread = (incidence[:E] * self.inverse_mass).T[:, :, None, None]  # (N, E, 1, 1): how multipliers move atoms
        scale = coupling[:E, :E].diagonal().rsqrt()[:, None]  # (E, 1)
        identity = torch.eye(E, device=frames.device)[..., None]  # (E, E, 1)
        off_diagonal = coupling[:E, :E, None] * scale[:, None] * scale[None] * (1 - identity)
        x, target = frames.permute(1, 2, 0), lengths.T  # (N, 3, F), (E, F)
        for _ in range(BOND_ROUNDS):
            bond = x[j] - x[i]  # (E, 3, F)
            length = bond.norm(dim=1).clamp_min(1e-6)  # (E, F)
            unit, gap = bond / length[:, None], length - target
            system = off_diagonal * (unit[:, None] * unit[None]).sum(2) + identity  # (E, E, F), symmetric
            solution = conjugate_gradients(system, scale * gap, CG_ITERATIONS)  # (E, F)
            move = (spread * ((scale * solution)[:, None] * unit)[None]).sum(1)  # (N, 3, F)
            reach = move.norm(dim=1).amax(0).clamp_min(1e-12)  # (F,)
            x = x - move * (STEP_LIMIT * gap.abs().amax(0) / reach).clamp(max=1.0)  # trust region
        return x.permute(2, 0, 1)

    def _push_into_range(self, frames: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """frames (F, N, 3) after RANGE_ROUNDS Jacobi rounds on the 1-3 pairs outside [lower, upper] (F, K - E): each
        moved back along its own axis by inverse mass, the correction divided among the offending pairs that meet at
        an atom and over-relaxed (so that a pair bounces off its bound instead of sticking to it)."""
        pairs = self.pairs[self.n_bonds :]
        i, j = pairs[:, 0], pairs[:, 1]
        share_i = (self.inverse_mass[i] / (self.inverse_mass[i] + self.inverse_mass[j]))[:, None]  # (K - E, 1)
        for _ in range(RANGE_ROUNDS):
            bond = frames[:, j] - frames[:, i]  # (F, K - E, 3)
            length = bond.norm(dim=-1).clamp_min(1e-6)
            wanted = torch.minimum(torch.maximum(length, lower), upper)
            active = (wanted != length).to(frames.dtype)
            per_atom = torch.zeros(frames.shape[:-1], dtype=frames.dtype, device=frames.device)
            per_atom = per_atom.index_add(-1, i, active).index_add(-1, j, active)  # (F, N)
            shared = torch.maximum(per_atom[:, i], per_atom[:, j]).clamp_min(1)
            step = bond * (RELAXATION * (length - wanted) / (length * shared))[..., None]  # moves i toward j
            frames = frames.index_add(-2, i, step * share_i).index_add(-2, j, -step * (1 - share_i))
        return frames

    def _gaps(self, distances: Tensor, goal: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """(F,) the largest distance of a bond from its goal (F, E), and of a pair outside its range [lower, upper]
        (F, K), of the pair distances (F, K) of a frame."""
        return (distances[:, : self.n_bonds] - goal).abs().amax(-1), beyond(distances, lower, upper)

    def _outside(self, frames: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """(...) largest distance outside [lower, upper] (..., K) in frames (..., N, 3)."""
        return beyond(self.distances(frames), lower, upper)


class BondedGeometry(BondProjection):
    """Bond lengths predicted from the history by a head fitted to one molecule (its bond table), and the projection
    of frames onto them and the training frames' 1-3 ranges (`BondProjection`).

    Empty (a no-op) until `fit` gives it a molecule; its buffers then travel in checkpoints, sized on loading. The
    length head reads, per bond, its atoms' types and its lengths over the history (in units of the bond's training
    mean and spread) and gives, per horizon step, the mean length and a Gaussian over the residuals about it, r = M eps
    from r_0 = 0 at the known last history frame, M lower triangular (`noise.lower_triangular`: each step's own
    scale and how it follows the steps before). A hydrogen's stretch decorrelates within a frame, a C=O or ring
    stretch oscillates over a few frames (aspirin's ring C-C: about 4 frames); independent draws put stretch power
    where the data have none (aspirin: 1.31x the temperature), and a first-order autoregression, which cannot
    oscillate, gave ring C-C steps 1.2-1.4x the data's (issue 15).
    """

    def __init__(
        self,
        history: int,
        horizon: int,
        hidden: int = 32,
        max_z: int = 100,
        tolerance: float = 1e-4,
        max_iterations: int = 12,
    ):
        super().__init__(tolerance, max_iterations)
        self.horizon = horizon
        self.register_buffer("length_mean", torch.zeros(0))
        self.register_buffer("length_std", torch.zeros(0))
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.length_head = nn.Sequential(
            nn.Linear(hidden + history, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, horizon + horizon * (horizon + 1) // 2),
        )

    @property
    def n_bonds(self) -> int:
        """The first n_bonds pairs are the bonds (their statistics are length_mean, length_std), the rest 1-3 pairs."""
        return len(self.length_mean)

    @torch.no_grad()
    def fit(self, z: Tensor, frames: Tensor) -> None:
        """Pairs from the first of `frames` (T, N, 3) Angstrom (training frames of one molecule), ranges and bond
        statistics over all of them."""
        frames = torch.as_tensor(frames, dtype=torch.float64)
        self.set_molecule(z, frames[0])
        if not self.fitted:
            raise DataError(
                f"model.bond_constraints: the training molecule (z = {self.z.tolist()}) has no covalent bond "
                "to keep; turn the constraints off"
            )
        lengths = self.distances(frames)  # (T, K)
        bonds = self._bonds
        self.lower, self.upper = lengths.min(0).values.float(), lengths.max(0).values.float()
        self.length_mean = lengths[:, :bonds].mean(0).float()
        self.length_std = lengths[:, :bonds].std(0).float().clamp_min(1e-4)

    def check(self, z: Tensor) -> None:
        """Refuse frames of another molecule than the one the geometry was fitted on; z (B, N). Not while compiling
        (reading a value out is a graph break): `rollout` checks before its first forecast."""
        if (
            self.fitted
            and not torch.compiler.is_compiling()
            and (z.shape[-1] != len(self.z) or not (z == self.z.to(z.device)).all())
        ):
            raise ConfigError(
                f"model.bond_constraints: the constraints were fitted on z = {self.z.tolist()}, but "
                f"the frames hold z = {z[0].tolist()}; bond constraints need one molecule"
            )

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
