"""`asteroid analyze`: is a predicted trajectory physical? It is judged against a reference trajectory of the same
molecule and, where known, against the true frames that follow the prediction's start (the continuation).

Definitions (constants below; report.json repeats them under "definitions"):
- Topology, from the reference's first frame: bonds are the atom pairs closer than 1.2 x the sum of their covalent
  radii (`asteroid.metrics.covalent_bonds`); angles are all bonded triples i-j-k (vertex j); the main dihedrals are
  one torsion i-j-k-l about every bond j-k between two heavy atoms (Z > 1) that are both non-terminal (bonded to some
  other atom too), i and l being the heaviest other neighbours of j and k (lowest index among equals): the backbone
  and hydroxyl rotors, without the redundant torsions through every hydrogen. IUPAC sign, degrees in (-180, 180].
- Radius of gyration: mass-weighted (standard atomic masses), about the centre of mass, Angstrom.
- Distributions: all finite predicted frames (trajectories pooled) against all reference frames, for each bond,
  angle and dihedral separately (bonds of one type sit in different environments), summarised by the mean and the
  max over them; and the radius of gyration. Jensen-Shannon divergence in base 2 (0 identical, 1 disjoint) of
  histograms on shared bins: 64 equal bins over the reference's range widened by half its width on each side, plus
  one bin below and one above for anything further out, so an exploded frame counts where the reference has nothing
  but cannot stretch the bins (as bins over the pooled range would); dihedrals on 64 bins over the full circle.
  Dihedral means and spreads are circular.
- Unphysical frame: non-finite coordinates, a bond outside [0.7, 1.5] x its reference median length, or two
  non-bonded atoms closer than 0.75 x the sum of their covalent radii. A geometry the reference itself visits is
  never unphysical: a limit goes out to the reference's own extreme where that lies further (malonaldehyde's proton
  transfer stretches an O-H bond 1.7 x). Frame f of a predicted trajectory lies (f + 1) dt_fs after its start.
- Coordinate error against the continuation: per frame, the Kabsch RMSD (after optimal superposition) and the plain
  RMSD, averaged over trajectories. Prediction and truth stay correlated while the Kabsch RMSD is below that of two
  independent reference frames: the decorrelation time is the first time it reaches the 5th percentile of the Kabsch
  RMSD of 1000 random pairs of reference frames (their mean is reported too, but is no threshold: the RMSD of
  independent frames spreads widely, 0.3 to 0.9 A for ethanol's rotamers, so a decorrelated trajectory can stay
  below the mean for hundreds of fs; the percentile makes the correlated time, if anything, short).
- Bond-length and angle deviation: RMS over bonds (angles), trajectories and the frames of a time bin of the
  predicted value minus the continuation's (while there is one), and minus the reference mean (over the whole
  prediction). The reference's own RMS fluctuation about its mean is the level a physical trajectory settles at
  against the mean (and sqrt(2) times that against a decorrelated continuation). Time bins grow geometrically
  (single frames first), at most 50.
- Energies (optional, `energy_comparison`): GFN2-xTB single points (tblite, set up as `asteroid simulate` does) of K
  frames evenly spaced through the pooled finite predicted frames, against the reference file's energies when they
  are GFN2-xTB ones (files of `asteroid simulate`), else against single points of K evenly spaced reference frames:
  MD17's DFT energies lie on another absolute scale. kcal/mol.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_masses, chemical_symbols, covalent_radii
from matplotlib.figure import Figure

from asteroid.data import load_trajectory
from asteroid.errors import ConfigError, DataError
from asteroid.fileio import atomic_output
from asteroid.metrics import covalent_bonds, kabsch_rmsd
from asteroid.report import format_table

STRETCH_LIMIT = 1.5  # x reference median bond length
COMPRESS_LIMIT = 0.7
OVERLAP_LIMIT = 0.75  # x sum of covalent radii, non-bonded pairs
HIST_BINS = 64
HIST_PAD = 0.5  # fraction of the reference's range added on each side of the bins
TIME_BINS = 50
INDEPENDENT_PAIRS = 1000
DECORRELATION_QUANTILE = 0.05  # of the Kabsch RMSD of independent frame pairs
CHUNK_FRAMES = 2048  # frames per block where all pair distances are formed
MIN_REFERENCE_FRAMES = 10
TARGET_FRAMES = 10_000
TARGET_BOND_JSD = 0.05
DEFINITIONS = {
    "topology": "covalent bonds of the reference's first frame (closer than 1.2 x the covalent radii sum); angles: "
                "bonded triples; main dihedrals: one torsion about each bond between two non-terminal heavy atoms, "
                "ends the heaviest other neighbours",
    "radius_of_gyration": "mass-weighted, about the centre of mass, Angstrom",
    "jsd": f"base 2 (0..1), per bond / angle / dihedral then mean and max; {HIST_BINS} shared bins over the "
           f"reference range widened by {HIST_PAD} x its width each side, plus an overflow bin each side; "
           "dihedrals: full circle",
    "unphysical": f"non-finite, a bond outside [{COMPRESS_LIMIT}, {STRETCH_LIMIT}] x its reference median (or the "
                  f"reference's own range), or non-bonded atoms closer than {OVERLAP_LIMIT} x their covalent radii "
                  "sum (or the reference's closest approach)",
    "time": "frame f of a predicted trajectory is (f + 1) dt_fs after its start (the last history frame)",
    "decorrelation": f"first time the trajectory-mean Kabsch RMSD to the continuation reaches the "
                     f"{DECORRELATION_QUANTILE:.0%} quantile of the Kabsch RMSD of {INDEPENDENT_PAIRS} random pairs "
                     "of reference frames",
    "deviation": "RMS over bonds (angles), trajectories and the frames of a time bin of predicted minus continuation, "
                 "and predicted minus reference mean",
}


# ---- geometry: every function takes coordinates (..., N, 3) Angstrom ---------------------------------------------
def bond_lengths(R: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(..., E) distances of the atom pairs (E, 2)."""
    return np.linalg.norm(R[..., pairs[:, 1], :] - R[..., pairs[:, 0], :], axis=-1)


def bond_angles(R: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """(..., A) angles i-j-k at vertex j of the triples (A, 3), degrees in [0, 180]."""
    a = R[..., triples[:, 0], :] - R[..., triples[:, 1], :]
    b = R[..., triples[:, 2], :] - R[..., triples[:, 1], :]
    # atan2 of sine and cosine stays accurate near 0 and 180 degrees, where arccos does not
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), (a * b).sum(-1)))


def dihedral_angles(R: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """(..., D) torsions i-j-k-l of the quads (D, 4), IUPAC sign (clockwise positive looking from j to k), degrees."""
    p0, p1, p2, p3 = (R[..., quads[:, k], :] for k in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n2 = np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * (b1 * n2).sum(-1)
    x = (np.cross(b1, b2) * n2).sum(-1)
    return np.degrees(np.arctan2(y, x))


def radius_of_gyration(R: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(...) mass-weighted radius of gyration about the centre of mass."""
    mass = atomic_masses[z]  # (N,)
    centre = (mass[:, None] * R).sum(-2, keepdims=True) / mass.sum()  # (..., 1, 3)
    return np.sqrt((mass * ((R - centre) ** 2).sum(-1)).sum(-1) / mass.sum())


@dataclass
class Topology:
    """Bonds (E, 2), angles (A, 3), main dihedrals (D, 4) as atom indices, and atom labels such as 'C0'."""

    z: np.ndarray
    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray

    @classmethod
    def of(cls, z: np.ndarray, frame: np.ndarray) -> "Topology":
        """The topology of one frame (N, 3); see the module docstring for what counts."""
        bonds = covalent_bonds(z, frame).T.numpy().reshape(-1, 2)  # (E, 2), i < j
        neighbours = [[] for _ in z]
        for i, j in bonds:
            neighbours[i].append(j)
            neighbours[j].append(i)
        angles = [(i, j, k) for j, around in enumerate(neighbours) for n, i in enumerate(sorted(around))
                  for k in sorted(around)[n + 1:]]

        def heaviest(candidates):
            return min(candidates, key=lambda a: (-z[a], a)) if candidates else None

        dihedrals = []
        for j, k in bonds:
            if z[j] > 1 and z[k] > 1:
                i = heaviest([a for a in neighbours[j] if a != k])
                l = heaviest([a for a in neighbours[k] if a not in (j, i)])  # not i: a three-membered ring
                if i is not None and l is not None:
                    dihedrals.append((i, j, k, l))
        return cls(np.asarray(z), bonds.astype(np.int64), np.array(angles, dtype=np.int64).reshape(-1, 3),
                   np.array(dihedrals, dtype=np.int64).reshape(-1, 4))

    def labels(self, atoms: np.ndarray) -> list[str]:
        """'C0-C1', 'C1-C0-H3', ... for rows of atom indices."""
        return ["-".join(f"{chemical_symbols[self.z[a]]}{a}" for a in row) for row in atoms]

    def features(self, R: np.ndarray) -> dict[str, np.ndarray]:
        """(M, K) bond lengths, angles, dihedrals and (M, 1) radius of gyration of frames R (M, N, 3)."""
        return {"bond_length": bond_lengths(R, self.bonds), "angle": bond_angles(R, self.angles),
                "dihedral": dihedral_angles(R, self.dihedrals),
                "radius_of_gyration": radius_of_gyration(R, self.z)[:, None]}

    def feature_labels(self) -> dict[str, list[str]]:
        return {"bond_length": self.labels(self.bonds), "angle": self.labels(self.angles),
                "dihedral": self.labels(self.dihedrals), "radius_of_gyration": ["Rg"]}


UNITS = {"bond_length": "A", "angle": "deg", "dihedral": "deg", "radius_of_gyration": "A"}


# ---- distributions -----------------------------------------------------------------------------------------------
def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 identical, 1 disjoint) of two histograms (counts or probabilities)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl_to_m(x):
        inside = x > 0  # 0 log 0 = 0
        return (x[inside] * np.log2(x[inside] / m[inside])).sum()

    return float(np.clip(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0, 1.0))


def shared_histogram(predicted: np.ndarray, reference: np.ndarray, periodic: bool = False, bins: int = HIST_BINS):
    """(lo, hi), predicted and reference counts (bins + 2,): below lo, the bins, above hi.

    The bins cover the reference's range widened by HIST_PAD x its width each side, or (-180, 180] when periodic.
    """
    if periodic:
        lo, hi = -180.0, 180.0
    else:
        lo, hi = float(reference.min()), float(reference.max())
        pad = HIST_PAD * (hi - lo) or max(1e-3 * abs(lo), 1e-6)  # a constant reference still gets bins
        lo, hi = lo - pad, hi + pad
    edges = np.linspace(lo, hi, bins + 1)

    def counts(x):
        return np.concatenate([[(x < lo).sum()], np.histogram(x, edges)[0], [(x > hi).sum()]])

    return (lo, hi), counts(predicted), counts(reference)


def _circular_stats(degrees: np.ndarray) -> tuple[float, float]:
    """Circular mean (degrees) and circular standard deviation sqrt(-2 ln R) (degrees)."""
    angle = np.radians(degrees)
    mean_vector = complex(np.cos(angle).mean(), np.sin(angle).mean())
    spread = math.sqrt(-2 * math.log(max(abs(mean_vector), 1e-300)))
    return math.degrees(math.atan2(mean_vector.imag, mean_vector.real)), math.degrees(spread)


def compare_distributions(predicted: np.ndarray, reference: np.ndarray, labels: list[str],
                          periodic: bool = False) -> dict:
    """JSD and moments of each column of predicted (M, K) against reference (M_ref, K); histograms for the figures."""
    def stats(x):
        return _circular_stats(x) if periodic else (float(x.mean()), float(x.std()))

    items = []
    for k, label in enumerate(labels):
        pred, ref = predicted[:, k], reference[:, k]
        item = {"label": label, "reference_mean": None, "reference_std": None, "predicted_mean": None,
                "predicted_std": None, "jsd": None}
        item["reference_mean"], item["reference_std"] = stats(ref)
        if len(pred):
            (lo, hi), p, q = shared_histogram(pred, ref, periodic)
            item["predicted_mean"], item["predicted_std"] = stats(pred)
            item |= {"jsd": jensen_shannon(p, q), "range": [lo, hi],
                     # fractions per bin (overflow bins first and last), rounded: they are for the figures
                     "predicted": np.round(p / p.sum(), 6).tolist(), "reference": np.round(q / q.sum(), 6).tolist()}
        items.append(item)
    jsds = [item["jsd"] for item in items if item["jsd"] is not None]
    worst = max(items, key=lambda item: -1 if item["jsd"] is None else item["jsd"])["label"] if jsds else None
    return {"count": len(items), "jsd_mean": float(np.mean(jsds)) if jsds else None,
            "jsd_max": max(jsds) if jsds else None, "worst": worst, "items": items}


# ---- unphysical frames ---------------------------------------------------------------------------------------------
def _chunks(n_frames: int):
    for start in range(0, n_frames, CHUNK_FRAMES):
        yield slice(start, min(start + CHUNK_FRAMES, n_frames))


@dataclass
class Limits:
    """Bond-length limits (E,) and closest allowed approach (P,) of every non-bonded pair (P, 2), Angstrom."""

    bonds: np.ndarray
    bond_lower: np.ndarray
    bond_upper: np.ndarray
    pairs: np.ndarray
    pair_lower: np.ndarray

    @classmethod
    def from_reference(cls, reference: np.ndarray, topology: Topology) -> "Limits":
        lengths = bond_lengths(reference, topology.bonds)  # (F_ref, E)
        median = np.median(lengths, axis=0)
        bonded = {tuple(pair) for pair in topology.bonds.tolist()}
        n_atoms = reference.shape[1]
        pairs = np.array([(i, j) for i in range(n_atoms) for j in range(i + 1, n_atoms) if (i, j) not in bonded],
                         dtype=np.int64).reshape(-1, 2)
        closest = np.full(len(pairs), np.inf)
        for block in _chunks(len(reference)):
            closest = np.minimum(closest, bond_lengths(reference[block], pairs).min(0, initial=np.inf))
        radii = covalent_radii[topology.z]
        return cls(topology.bonds, np.minimum(COMPRESS_LIMIT * median, lengths.min(0, initial=np.inf)),
                   np.maximum(STRETCH_LIMIT * median, lengths.max(0, initial=0.0)), pairs,
                   np.minimum(OVERLAP_LIMIT * (radii[pairs[:, 0]] + radii[pairs[:, 1]]), closest))

    def violated(self, R: np.ndarray) -> np.ndarray:
        """(M,) True for the unphysical frames of R (M, N, 3)."""
        bad = np.empty(len(R), dtype=bool)
        for block in _chunks(len(R)):
            frames = R[block]
            lengths, distances = bond_lengths(frames, self.bonds), bond_lengths(frames, self.pairs)
            bad[block] = (~np.isfinite(frames).all((1, 2)) | ((lengths < self.bond_lower) |
                                                              (lengths > self.bond_upper)).any(1)
                          | (distances < self.pair_lower).any(1))
        return bad

    def reason(self, frame: np.ndarray, topology: Topology) -> str:
        """What is wrong with one unphysical frame (N, 3), in words (the worst offence)."""
        if not np.isfinite(frame).all():
            return "non-finite coordinates"
        lengths = bond_lengths(frame, self.bonds)
        ratio = np.maximum(lengths / self.bond_upper, self.bond_lower / lengths)
        if len(ratio) and ratio.max() > 1:
            e = int(ratio.argmax())
            return (f"bond {topology.labels(self.bonds[e:e + 1])[0]} {lengths[e]:.3f} A (allowed "
                    f"{self.bond_lower[e]:.3f}-{self.bond_upper[e]:.3f} A)")
        distances = bond_lengths(frame, self.pairs)
        p = int((distances / self.pair_lower).argmin())
        return (f"non-bonded {topology.labels(self.pairs[p:p + 1])[0]} {distances[p]:.3f} A apart (closest allowed "
                f"{self.pair_lower[p]:.3f} A)")


def unphysical_summary(predicted: np.ndarray, limits: Limits, topology: Topology, dt_fs: float) -> dict:
    """Per trajectory of predicted (B, F, N, 3): the first unphysical frame, its time and why, and how many."""
    B, F = predicted.shape[:2]
    bad = limits.violated(predicted.reshape(B * F, *predicted.shape[2:])).reshape(B, F)
    trajectories = []
    for b in range(B):
        first = int(bad[b].argmax()) if bad[b].any() else None
        trajectories.append({
            "first_frame": first, "first_time_fs": None if first is None else (first + 1) * dt_fs,
            "reason": None if first is None else limits.reason(predicted[b, first], topology),
            "unphysical_frames": int(bad[b].sum())})
    labels = topology.labels(limits.bonds)
    return {"thresholds": {"stretch": STRETCH_LIMIT, "compress": COMPRESS_LIMIT, "overlap": OVERLAP_LIMIT},
            "bond_limits": [{"bond": label, "lower": lo, "upper": hi}
                            for label, lo, hi in zip(labels, limits.bond_lower.tolist(), limits.bond_upper.tolist())],
            "any": bool(bad.any()), "fraction": float(bad.mean()), "trajectories": trajectories}


# ---- curves against time -------------------------------------------------------------------------------------------
def time_bins(n_frames: int, n_bins: int = TIME_BINS) -> np.ndarray:
    """Start frames of at most n_bins bins over 0..n_frames-1: one frame each at first, growing geometrically."""
    return np.unique(np.floor(np.geomspace(1, n_frames + 1, n_bins + 1)[:-1]).astype(np.int64) - 1)


def binned(values: np.ndarray, dt_fs: float) -> tuple[list[float], list[float | None]]:
    """Mean over trajectories and the frames of each time bin of values (B, F), ignoring non-finite ones; returns
    the bins' mean times (fs after the start) and the means."""
    starts = time_bins(values.shape[1])
    ends = np.append(starts[1:], values.shape[1])
    times = (np.arange(values.shape[1]) + 1) * dt_fs
    means = []
    for start, end in zip(starts, ends):
        block = values[:, start:end]
        finite = np.isfinite(block)
        means.append(float(block[finite].mean()) if finite.any() else None)
    return [float(times[s:e].mean()) for s, e in zip(starts, ends)], means


def _first_reaching(curve: np.ndarray, level: float, dt_fs: float) -> float | None:
    """Time of the first frame whose value reaches level (non-finite counts as reached), or None."""
    reached = ~(curve < level)
    return float((reached.argmax() + 1) * dt_fs) if reached.any() else None


def coordinate_error(predicted: np.ndarray, continuation: np.ndarray, reference: np.ndarray, dt_fs: float) -> dict:
    """Kabsch and plain RMSD of predicted (B, F, N, 3) against continuation (B, F_c, N, 3), binned over time, with
    the level of two independent reference frames and the decorrelation time."""
    B, F_c, N, _ = continuation.shape
    pred = torch.from_numpy(predicted[:, :F_c])
    true = torch.from_numpy(continuation)
    every_atom = torch.ones(B, F_c, N, dtype=torch.bool)
    kabsch = kabsch_rmsd(pred, true, every_atom).numpy()  # (B, F_c)
    plain = (pred - true).square().sum(-1).mean(-1).sqrt().numpy()  # (B, F_c)
    rng = np.random.default_rng(0)
    i = rng.integers(len(reference), size=INDEPENDENT_PAIRS)
    j = rng.integers(len(reference) - 1, size=INDEPENDENT_PAIRS)
    j += j >= i  # two different frames
    first, second = torch.from_numpy(reference[i]), torch.from_numpy(reference[j])
    independent = kabsch_rmsd(first, second, torch.ones(INDEPENDENT_PAIRS, N, dtype=torch.bool)).numpy()
    level = float(np.quantile(independent, DECORRELATION_QUANTILE))
    times, kabsch_binned = binned(kabsch, dt_fs)
    return {"frames": F_c, "time_fs": times, "kabsch_rmsd": kabsch_binned, "rmsd": binned(plain, dt_fs)[1],
            "independent_kabsch_rmsd": float(independent.mean()), "decorrelation_level": level,
            "independent_rmsd": (first - second).square().sum(-1).mean(-1).sqrt().mean().item(),
            # a diverged (NaN) trajectory counts as decorrelated
            "decorrelation_time_fs": _first_reaching(kabsch.mean(0), level, dt_fs),
            "decorrelation_time_fs_per_trajectory": [_first_reaching(row, level, dt_fs) for row in kabsch]}


def deviation(predicted: np.ndarray, continuation: np.ndarray | None, reference: np.ndarray, dt_fs: float) -> dict:
    """RMS deviation over time of a feature, predicted (B, F, K), against continuation (B, F_c, K) and against the
    reference mean (reference (F_ref, K)), with the reference's own RMS fluctuation about its mean."""
    mean = reference.mean(0)
    times, against_mean = binned(((predicted - mean) ** 2).mean(-1), dt_fs)
    result = {"reference_fluctuation": float(np.sqrt(((reference - mean) ** 2).mean())),
              "vs_reference_mean": {"time_fs": times, "rms": [None if v is None else math.sqrt(v)
                                                              for v in against_mean]},
              "vs_continuation": None}
    if continuation is not None:
        times, against_true = binned(((predicted[:, :continuation.shape[1]] - continuation) ** 2).mean(-1), dt_fs)
        result["vs_continuation"] = {"time_fs": times, "rms": [None if v is None else math.sqrt(v)
                                                              for v in against_true]}
    return result


# ---- the report ----------------------------------------------------------------------------------------------------
def _jsonable(value):
    """Python scalars and lists for numpy ones, None for NaN and infinity."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def physical_report(predicted: np.ndarray, z: np.ndarray, dt_fs: float, reference: np.ndarray,
                    reference_dt_fs: float, continuation: np.ndarray | None = None) -> dict:
    """Physical checks of predicted (B, F, N, 3) Angstrom, frames dt_fs apart, against reference (F_ref, N, 3), the
    whole reference trajectory at its own spacing reference_dt_fs, and against continuation (B, F_c, N, 3), the true
    frames after each prediction's start at the predicted spacing (F_c <= F; None or F_c = 0 when unknown).

    Returns a JSON-serialisable dict (definitions in the module docstring and under "definitions"): "unphysical",
    "distributions", "coordinate_error" (None without a continuation), "deviation" and "target".
    """
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    z = np.asarray(z).astype(np.int64)
    if predicted.ndim != 4 or predicted.shape[-1] != 3 or predicted.shape[1] == 0:
        raise ValueError(f"predicted must have shape (B, F, N, 3) with F >= 1, got {predicted.shape}")
    B, F, N, _ = predicted.shape
    if reference.ndim != 3 or reference.shape[1:] != (N, 3) or z.shape != (N,):
        raise ValueError(f"reference {reference.shape} and z {z.shape} must be (F_ref, {N}, 3) and ({N},)")
    if len(reference) < 2:
        raise ValueError(f"the reference needs at least 2 frames, got {len(reference)}")
    if continuation is not None:
        continuation = np.asarray(continuation, np.float64)
        if continuation.ndim != 4 or continuation.shape[0] != B or continuation.shape[2:] != (N, 3) \
                or continuation.shape[1] > F:
            raise ValueError(f"continuation must have shape ({B}, F_c <= {F}, {N}, 3), got {continuation.shape}")
        if continuation.shape[1] == 0:
            continuation = None

    topology = Topology.of(z, reference[0])
    labels = topology.feature_labels()
    frames = predicted.reshape(B * F, N, 3)
    finite = np.isfinite(frames).all((1, 2))
    pred_features, ref_features = topology.features(frames), topology.features(reference)
    cont_features = None if continuation is None else topology.features(continuation.reshape(-1, N, 3))
    limits = Limits.from_reference(reference, topology)
    report = {
        "definitions": DEFINITIONS,
        "predicted": {"trajectories": B, "frames": F, "dt_fs": float(dt_fs), "duration_fs": F * float(dt_fs),
                      "nonfinite_frames": int((~finite).sum())},
        "reference": {"frames": len(reference), "dt_fs": float(reference_dt_fs),
                      "duration_fs": (len(reference) - 1) * float(reference_dt_fs)},
        "atoms": N, "z": z.tolist(),
        "topology": {"bonds": labels["bond_length"], "angles": labels["angle"], "dihedrals": labels["dihedral"]},
        "unphysical": unphysical_summary(predicted, limits, topology, dt_fs),
        "distributions": {name: compare_distributions(pred_features[name][finite], ref_features[name], labels[name],
                                                      periodic=name == "dihedral")
                          for name in pred_features},
        "coordinate_error": None if continuation is None else coordinate_error(predicted, continuation, reference,
                                                                               dt_fs),
        "deviation": {},
    }
    for name in ("bond_length", "angle"):
        width = len(labels[name])
        report["deviation"][name] = None if not width else deviation(
            pred_features[name].reshape(B, F, width),
            None if cont_features is None else cont_features[name].reshape(B, -1, width), ref_features[name], dt_fs)
    report["target"] = target_verdict(report)
    return _jsonable(report)


def target_verdict(report: dict) -> dict:
    """The project's target: TARGET_FRAMES frames per trajectory, none unphysical, every bond's JSD within
    TARGET_BOND_JSD."""
    unmet = []
    frames = report["predicted"]["frames"]
    if frames < TARGET_FRAMES:
        unmet.append(f"{frames} frames per trajectory, fewer than {TARGET_FRAMES}")
    broken = sum(t["first_frame"] is not None for t in report["unphysical"]["trajectories"])
    if broken:
        unmet.append(f"unphysical frames in {broken} of {len(report['unphysical']['trajectories'])} trajectories")
    jsd = report["distributions"]["bond_length"]["jsd_max"]
    if jsd is None or jsd > TARGET_BOND_JSD:
        unmet.append("no bond-length distribution" if jsd is None else
                     f"bond-length JSD up to {jsd:.3f} ({report['distributions']['bond_length']['worst']})")
    return {"frames": TARGET_FRAMES, "bond_jsd_max": TARGET_BOND_JSD, "met": not unmet, "unmet": unmet}


# ---- optional energies --------------------------------------------------------------------------------------------
def xtb_energies(z: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """GFN2-xTB single-point energies (kcal/mol) of frames (M, N, 3), NaN where the SCF fails (a broken geometry)."""
    from ase import Atoms
    from ase.calculators.calculator import CalculatorError

    from asteroid.simulate import EV_PER_KCAL_MOL, openmp_threads, xtb_calculator  # tblite loads only if asked

    atoms = Atoms(numbers=z)
    atoms.calc = xtb_calculator()
    energies = np.full(len(frames), np.nan)
    with openmp_threads(1):
        for m, frame in enumerate(frames):
            atoms.set_positions(frame)
            try:
                energies[m] = atoms.get_potential_energy() / EV_PER_KCAL_MOL
            except CalculatorError:
                pass
    return energies


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over 0..n-1 (all of them when k >= n)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def energy_comparison(predicted: np.ndarray, z: np.ndarray, reference: np.ndarray, samples: int,
                      reference_energies: np.ndarray | None = None) -> dict:
    """GFN2-xTB energies of `samples` frames evenly spaced through the finite frames of predicted (B, F, N, 3),
    against reference_energies (kcal/mol, GFN2-xTB) or, without them, single points of as many reference frames
    (F_ref, N, 3). Means, standard deviations and the JSD (sqrt(samples) bins, 5 to 64) in kcal/mol."""
    frames = np.asarray(predicted, np.float64).reshape(-1, *predicted.shape[-2:])
    frames = frames[np.isfinite(frames).all((1, 2))]
    if not len(frames):
        return {"samples": 0, "failed": 0, "jsd": None, "reference_source": None}
    z = np.asarray(z).astype(np.int64)
    pred = xtb_energies(z, frames[evenly_spaced(len(frames), samples)])
    if reference_energies is None:
        ref = xtb_energies(z, np.asarray(reference, np.float64)[evenly_spaced(len(reference), samples)])
        source = "GFN2-xTB single points of evenly spaced reference frames"
    else:
        ref, source = np.asarray(reference_energies, np.float64).reshape(-1), "the reference file's GFN2-xTB energies"
    ok, ref = pred[np.isfinite(pred)], ref[np.isfinite(ref)]
    result = {"unit": "kcal/mol", "samples": len(pred), "failed": int((~np.isfinite(pred)).sum()),
              "reference_source": source, "reference_count": len(ref),
              "reference_mean": float(ref.mean()), "reference_std": float(ref.std()),
              "predicted_mean": None, "predicted_std": None, "jsd": None}
    if len(ok):
        (lo, hi), p, q = shared_histogram(ok, ref, bins=int(np.clip(round(math.sqrt(len(ok))), 5, HIST_BINS)))
        result |= {"predicted_mean": float(ok.mean()), "predicted_std": float(ok.std()), "jsd": jensen_shannon(p, q),
                   "range": [lo, hi], "predicted": (p / p.sum()).tolist(), "reference": (q / q.sum()).tolist()}
    return _jsonable(result)


# ---- console table, figures, files -----------------------------------------------------------------------------------
NAMES = {"bond_length": "bond length", "angle": "angle", "dihedral": "dihedral",
         "radius_of_gyration": "radius of gyration"}


def _sample_rows(curve: dict, columns: dict[str, str], rows: int = 8) -> list[dict]:
    """A few rows (bins spread over the curve) of a binned curve's columns {key: header}, for the console."""
    picks = evenly_spaced(len(curve["time_fs"]), rows)
    return [{"time fs": curve["time_fs"][i], **{header: curve[key][i] for key, header in columns.items()}}
            for i in picks]


def format_report(report: dict) -> str:
    """The report as console text: tables and one-line verdicts."""
    def num(value, fmt=".4g"):
        return "-" if value is None else format(value, fmt)

    p, r = report["predicted"], report["reference"]
    lines = [f"predicted: {p['trajectories']} trajectory(ies) x {p['frames']} frames, {p['dt_fs']:g} fs apart "
             f"({p['duration_fs'] / 1000:.4g} ps each); reference: {r['frames']} frames, {r['dt_fs']:g} fs apart "
             f"({r['duration_fs'] / 1000:.4g} ps); {report['atoms']} atoms",
             f"topology (reference frame 0): {len(report['topology']['bonds'])} bonds, "
             f"{len(report['topology']['angles'])} angles, {len(report['topology']['dihedrals'])} main dihedrals "
             f"({', '.join(report['topology']['dihedrals']) or 'none'})", ""]
    unphysical = report["unphysical"]
    thresholds = unphysical["thresholds"]
    lines.append(f"unphysical frames (bond outside {thresholds['compress']}-{thresholds['stretch']} x reference "
                 f"median, non-bonded atoms closer than {thresholds['overlap']} x covalent radii sum, non-finite):")
    if not unphysical["any"]:
        lines.append(f"  none in {p['trajectories']} x {p['frames']} frames")
    for b, t in enumerate(unphysical["trajectories"]):
        if t["first_frame"] is not None:
            lines.append(f"  trajectory {b}: first at frame {t['first_frame']} ({t['first_time_fs']:g} fs): "
                         f"{t['reason']}; {t['unphysical_frames']} of {p['frames']} frames unphysical")
    rows = [{"quantity": f"{NAMES[name]} ({UNITS[name]})", "count": d["count"], "JSD mean": num(d["jsd_mean"]),
             "JSD max": num(d["jsd_max"]), "worst": d["worst"] or "-"}
            for name, d in report["distributions"].items()]
    lines += ["", format_table(rows, "distributions against the reference (Jensen-Shannon divergence, base 2)")]
    columns = ("reference_mean", "reference_std", "predicted_mean", "predicted_std", "jsd")
    bond_rows = [{"what": item["label"], **{c.replace("_", " "): num(item[c]) for c in columns}}
                 for name in ("bond_length", "radius_of_gyration") for item in report["distributions"][name]["items"]]
    if bond_rows:
        lines += ["", format_table(bond_rows, "bond lengths and radius of gyration (A)")]
    error = report["coordinate_error"]
    if error is None:
        lines += ["", "coordinate error: no continuation known (no true frames after the start)"]
    else:
        columns = {"kabsch_rmsd": "Kabsch RMSD A", "rmsd": "RMSD A"}
        table = [{k: num(v) for k, v in row.items()} for row in _sample_rows(error, columns)]
        lines += ["", format_table(table, f"coordinate error against the continuation ({error['frames']} frames), A"),
                  f"independent reference frames: Kabsch RMSD {error['independent_kabsch_rmsd']:.4g} A (5th "
                  f"percentile {error['decorrelation_level']:.4g} A), RMSD {error['independent_rmsd']:.4g} A; " + (
                      "still correlated at the end" if error["decorrelation_time_fs"] is None
                      else f"decorrelated after {error['decorrelation_time_fs']:g} fs")]
    for name, d in report["deviation"].items():
        if d is None:
            continue
        last_mean = next((v for v in reversed(d["vs_reference_mean"]["rms"]) if v is not None), None)
        text = (f"{NAMES[name]} RMS deviation from the reference mean: {num(last_mean)} {UNITS[name]} at the end "
                f"(reference fluctuation {d['reference_fluctuation']:.4g})")
        if d["vs_continuation"] is not None:
            text += f"; from the continuation: {num(d['vs_continuation']['rms'][0])} at first"
        lines.append(text)
    energy = report.get("energy")
    if energy and energy.get("samples"):
        lines += ["", f"GFN2-xTB energies (kcal/mol): predicted {num(energy['predicted_mean'], '.2f')} +- "
                      f"{num(energy['predicted_std'], '.2f')} ({energy['samples']} frames, {energy['failed']} failed); "
                      f"reference {energy['reference_mean']:.2f} +- {energy['reference_std']:.2f} "
                      f"({energy['reference_source']}); JSD {num(energy['jsd'], '.3f')}"]
    target = report["target"]
    verdict = "MET" if target["met"] else "NOT MET: " + "; ".join(target["unmet"])
    lines += ["", f"target ({target['frames']} frames with no unphysical frame, every bond-length JSD <= "
                  f"{target['bond_jsd_max']}): {verdict}"]
    return "\n".join(lines)


def _histogram_grid(distribution: dict, unit: str) -> Figure:
    """One panel per bond / angle / dihedral: predicted and reference histograms (densities)."""
    items = [item for item in distribution["items"] if item["jsd"] is not None]
    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    figure = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    for ax, item in zip(figure.subplots(rows, cols, squeeze=False).flat, items):
        edges = np.linspace(*item["range"], len(item["predicted"]) - 1)
        for key, style in (("reference", dict(color="k")), ("predicted", dict(color="C1", linestyle="--"))):
            fractions = np.asarray(item[key])
            ax.stairs(fractions[1:-1] / np.diff(edges), edges, label=key, **style)
        outside = item["predicted"][0] + item["predicted"][-1]
        ax.set_title(f"{item['label']}  JSD {item['jsd']:.3f}" + (f", {outside:.1%} outside" if outside else ""),
                     fontsize="small")
        ax.set_xlabel(unit, fontsize="small")
    for ax in list(figure.axes)[len(items):]:
        ax.set_visible(False)
    figure.axes[0].legend(fontsize="small")
    return figure


def report_figures(report: dict) -> dict[str, Figure]:
    """name -> Figure, drawn from the report dict alone."""
    figures = {}
    error = report["coordinate_error"]
    if error is not None:
        figure = Figure(figsize=(9, 4), layout="constrained")
        ax = figure.add_subplot()
        for key, label, colour in (("kabsch_rmsd", "Kabsch RMSD", "C0"), ("rmsd", "RMSD", "C1")):
            ax.plot(error["time_fs"], [np.nan if v is None else v for v in error[key]], marker="o", markersize=3,
                    color=colour, label=label)
            ax.axhline(error[f"independent_{key}"], color=colour, linestyle=":", label=f"{label}, independent frames")
        ax.axhline(error["decorrelation_level"], color="C0", linestyle="-.", linewidth=0.8,
                   label="Kabsch RMSD, independent frames, 5th percentile")
        if error["decorrelation_time_fs"] is not None:
            ax.axvline(error["decorrelation_time_fs"], color="0.5", linewidth=0.8, label="decorrelated")
        ax.set(xscale="log", xlabel="time after the start (fs)", ylabel="Angstrom",
               title="coordinate error against the continuation")
        figure.legend(loc="outside right upper", fontsize="small")
        figures["coordinate_error"] = figure
    deviations = {name: d for name, d in report["deviation"].items() if d is not None}
    if deviations:
        figure = Figure(figsize=(6, 3.2 * len(deviations)), layout="constrained")
        for ax, (name, d) in zip(figure.subplots(len(deviations), 1, squeeze=False)[:, 0], deviations.items()):
            for key, label in (("vs_continuation", "from the continuation"), ("vs_reference_mean",
                                                                              "from the reference mean")):
                if d[key] is not None:
                    ax.plot(d[key]["time_fs"], [np.nan if v is None else v for v in d[key]["rms"]], marker="o",
                            markersize=3, label=label)
            ax.axhline(d["reference_fluctuation"], color="k", linestyle=":", label="reference fluctuation")
            ax.set(xscale="log", xlabel="time after the start (fs)", ylabel=f"RMS {NAMES[name]} deviation "
                                                                            f"({UNITS[name]})")
            ax.legend(fontsize="small")
        figures["deviation"] = figure
    for name, distribution in report["distributions"].items():
        if distribution["jsd_mean"] is not None:
            figures[name] = _histogram_grid(distribution, UNITS[name])
    energy = report.get("energy")
    if energy and energy.get("jsd") is not None:
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        ax = figure.add_subplot()
        edges = np.linspace(*energy["range"], len(energy["predicted"]) - 1)
        for key, style in (("reference", dict(color="k")), ("predicted", dict(color="C1", linestyle="--"))):
            ax.stairs(np.asarray(energy[key])[1:-1] / np.diff(edges), edges, label=key, **style)
        ax.set(xlabel="GFN2-xTB energy (kcal/mol)", title=f"energies, JSD {energy['jsd']:.3f}")
        ax.legend(fontsize="small")
        figures["energy"] = figure
    return figures


def save_report(report: dict, out_dir: Path, tensorboard_dir: Path | None = None) -> None:
    """Print the console table; write out_dir/report.json and one PNG per figure (atomically), and the same figures
    to TensorBoard under analysis/<name> when tensorboard_dir is given."""
    out_dir = Path(out_dir)
    print(format_report(report))
    with atomic_output(out_dir / "report.json", "w") as handle:
        json.dump(report, handle, indent=1, allow_nan=False)
    figures = report_figures(report)
    for name, figure in figures.items():
        with atomic_output(out_dir / f"{name}.png") as handle:
            figure.savefig(handle, format="png", dpi=100)
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard_dir))
        for name, figure in figures.items():
            writer.add_figure(f"analysis/{name}", figure, close=False)
        writer.close()


# ---- `asteroid analyze` --------------------------------------------------------------------------------------------
@dataclass
class Predicted:
    R: np.ndarray  # (B, F, N, 3) Angstrom, may hold non-finite frames
    z: np.ndarray
    dt_fs: float
    start_frame: np.ndarray | None  # (B,) frame of `source` that is each trajectory's last history frame
    source: str | None


def load_predicted(path: str | Path, dt_fs: float | None = None) -> Predicted:
    """An `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs, optionally start_frame and source), or any
    trajectory file `load_trajectory` reads. dt_fs, when given, overrides the file's spacing."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        trajectory = load_trajectory(path, dt_fs=dt_fs, check_order=False)
        return Predicted(np.asarray(trajectory.R, np.float64)[None], trajectory.z, trajectory.dt_fs, None, None)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("R", "z", "dt_fs", "start_frame", "source") if key in data.files}
    except Exception as exc:  # zipfile, zlib and numpy all raise their own types on a damaged file
        raise DataError(f"{path}: cannot read the npz file ({' '.join(str(exc).split())})") from exc
    if "R" not in arrays or "z" not in arrays:
        raise DataError(f"{path}: needs keys R (B, F, N, 3) or (F, N, 3) Angstrom and z (N,)")
    R = np.asarray(arrays["R"], np.float64)
    R = R[None] if R.ndim == 3 else R
    if R.ndim != 4 or R.shape[-1] != 3 or R.shape[1] == 0 or R.shape[2] == 0:
        raise DataError(f"{path}: R has shape {arrays['R'].shape}, expected (B, F, N, 3) or (F, N, 3) with frames")
    z = np.asarray(arrays["z"]).reshape(-1)
    if len(z) != R.shape[2]:
        raise DataError(f"{path}: z has {len(z)} atoms but R has {R.shape[2]}")
    if dt_fs is None and "dt_fs" not in arrays:
        raise DataError(f"{path}: the file does not say the time between frames; pass --dt-fs")
    dt_fs = float(arrays["dt_fs"]) if dt_fs is None else dt_fs
    if not (math.isfinite(dt_fs) and dt_fs > 0):
        raise DataError(f"{path}: the frame spacing must be a positive number of fs, got {dt_fs}")
    start = arrays.get("start_frame")
    return Predicted(R, z.astype(np.int64), dt_fs, None if start is None else np.atleast_1d(start).astype(np.int64),
                     None if "source" not in arrays else str(arrays["source"]))


def continuation_from(reference, start_frame: np.ndarray, predicted: Predicted, path: Path) -> np.ndarray | None:
    """The reference frames after each start frame (B,) at the predicted spacing: (B, F_c, N, 3), or None when the
    reference ends there."""
    B, F = predicted.R.shape[:2]
    if len(start_frame) != B:
        raise ConfigError(f"{len(start_frame)} start frame(s) for {B} predicted trajectories; give one each")
    stride = predicted.dt_fs / reference.dt_fs
    if abs(stride - round(stride)) > 1e-6 * stride or round(stride) < 1:
        raise DataError(f"{path}: predicted frames {predicted.dt_fs:g} fs apart are not a whole number of the "
                        f"reference's frames ({reference.dt_fs:g} fs)")
    if start_frame.min() < 0 or start_frame.max() >= reference.n_frames:
        raise ConfigError(f"start frames {start_frame.tolist()} outside the reference's {reference.n_frames} frames")
    stride = round(stride)
    kept = min(F, int((reference.n_frames - 1 - start_frame.max()) // stride))
    if kept < 1:
        return None
    index = start_frame[:, None] + stride * np.arange(1, kept + 1)  # (B, F_c)
    return np.asarray(reference.R, np.float64)[index]


def gfn2_energies(path: Path, trajectory) -> np.ndarray | None:
    """The reference's energies when its file says they are GFN2-xTB ones (written by `asteroid simulate`)."""
    from asteroid.simulate import METHOD

    if path.suffix.lower() != ".npz" or trajectory.E is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        method = str(data["method"]) if "method" in data.files else None
    return np.asarray(trajectory.E, np.float64) if method == METHOD else None


def main(argv: list[str]) -> int:
    """`asteroid analyze pred.npz --reference data/ethanol_xtb.npz --out runs/analysis/ethanol`."""
    parser = argparse.ArgumentParser(
        prog="asteroid analyze", allow_abbrev=False,
        description="Is a predicted trajectory physical? Bond lengths, angles, dihedrals and radius of gyration "
                    "against a reference trajectory (Jensen-Shannon divergence), the first unphysical frame, the "
                    "coordinate error against the true continuation, optionally GFN2-xTB energies. Prints a table, "
                    "writes report.json and PNG figures.")
    parser.add_argument("predicted", help="an `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs) or any "
                                          "trajectory file")
    parser.add_argument("--reference", required=True, help="the reference trajectory (any trajectory file)")
    parser.add_argument("--out", help="folder for report.json and the figures (default runs/analysis/<PREDICTED>)")
    parser.add_argument("--energies", type=int, default=0, metavar="K",
                        help="GFN2-xTB single points of K predicted frames (seconds each for big molecules)")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write the figures to TensorBoard here")
    parser.add_argument("--dt-fs", type=float, help="fs between predicted frames, if the file does not say")
    parser.add_argument("--reference-dt-fs", type=float, help="fs between reference frames, if the file does not say")
    parser.add_argument("--start", type=int, nargs="+", metavar="FRAME",
                        help="reference frame of each predicted trajectory's start (its last history frame): the "
                             "frames after it are the continuation (default: the rollout file's start_frame when "
                             "its source is the reference)")
    args = parser.parse_args(argv)
    if args.energies < 0:
        raise ConfigError(f"--energies must be >= 0, got {args.energies}")
    predicted_path, reference_path = Path(args.predicted), Path(args.reference)
    predicted = load_predicted(predicted_path, args.dt_fs)
    reference = load_trajectory(reference_path, dt_fs=args.reference_dt_fs)
    if reference.n_atoms != predicted.R.shape[2]:
        raise DataError(f"{predicted_path}: {predicted.R.shape[2]} atoms, but the reference {reference_path} has "
                        f"{reference.n_atoms}")
    if not np.array_equal(reference.z, predicted.z):
        raise DataError(f"{predicted_path}: atomic numbers {predicted.z.tolist()} differ from those of the reference "
                        f"{reference_path} ({reference.z.tolist()})")
    if reference.n_frames < MIN_REFERENCE_FRAMES:
        raise DataError(f"{reference_path}: {reference.n_frames} frame(s); the reference distributions need at least "
                        f"{MIN_REFERENCE_FRAMES}")
    start = None
    if args.start is not None:
        start = np.asarray(args.start, np.int64)
    elif predicted.start_frame is not None and predicted.source is not None \
            and Path(predicted.source).resolve() == reference_path.resolve():
        start = predicted.start_frame
    continuation = None if start is None else continuation_from(reference, start, predicted, predicted_path)
    report = physical_report(predicted.R, predicted.z, predicted.dt_fs, reference.R, reference.dt_fs, continuation)
    if args.energies:
        report["energy"] = energy_comparison(predicted.R, predicted.z, reference.R, args.energies,
                                             gfn2_energies(reference_path, reference))
    out = Path(args.out) if args.out else Path("runs") / "analysis" / predicted_path.stem
    save_report(report, out, None if args.tensorboard is None else Path(args.tensorboard))
    print(f"\nreport: {out / 'report.json'}, figures: {out}/*.png")
    return 0
