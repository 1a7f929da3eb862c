"""Unphysical frames: bonds outside their limits, overlapping atoms, non-finite coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import covalent_radii

from asteroid.analysis.geometry import Topology, bond_lengths

STRETCH_LIMIT = 1.5  # x reference median bond length
COMPRESS_LIMIT = 0.7
OVERLAP_LIMIT = 0.75  # x sum of covalent radii, non-bonded pairs
CHUNK_FRAMES = 2048  # frames per block where all pair distances are formed


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
        pairs = np.array(
            [(i, j) for i in range(n_atoms) for j in range(i + 1, n_atoms) if (i, j) not in bonded], dtype=np.int64
        ).reshape(-1, 2)
        closest = np.full(len(pairs), np.inf)
        for block in _chunks(len(reference)):
            closest = np.minimum(closest, bond_lengths(reference[block], pairs).min(0, initial=np.inf))
        radii = covalent_radii[topology.z]
        return cls(
            topology.bonds,
            np.minimum(COMPRESS_LIMIT * median, lengths.min(0, initial=np.inf)),
            np.maximum(STRETCH_LIMIT * median, lengths.max(0, initial=0.0)),
            pairs,
            np.minimum(OVERLAP_LIMIT * (radii[pairs[:, 0]] + radii[pairs[:, 1]]), closest),
        )

    def violated(self, R: np.ndarray) -> np.ndarray:
        """(M,) True for the unphysical frames of R (M, N, 3)."""
        bad = np.empty(len(R), dtype=bool)
        for block in _chunks(len(R)):
            frames = R[block]
            lengths, distances = bond_lengths(frames, self.bonds), bond_lengths(frames, self.pairs)
            bad[block] = (
                ~np.isfinite(frames).all((1, 2))
                | ((lengths < self.bond_lower) | (lengths > self.bond_upper)).any(1)
                | (distances < self.pair_lower).any(1)
            )
        return bad

    def reason(self, frame: np.ndarray, topology: Topology) -> str:
        """What is wrong with one unphysical frame (N, 3), in words (the worst offence)."""
        if not np.isfinite(frame).all():
            return "non-finite coordinates"
        lengths = bond_lengths(frame, self.bonds)
        ratio = np.maximum(lengths / self.bond_upper, self.bond_lower / lengths)
        if len(ratio) and ratio.max() > 1:
            e = int(ratio.argmax())
            return (
                f"bond {topology.labels(self.bonds[e : e + 1])[0]} {lengths[e]:.3f} A (allowed "
                f"{self.bond_lower[e]:.3f}-{self.bond_upper[e]:.3f} A)"
            )
        distances = bond_lengths(frame, self.pairs)
        p = int((distances / self.pair_lower).argmin())
        return (
            f"non-bonded {topology.labels(self.pairs[p : p + 1])[0]} {distances[p]:.3f} A apart (closest allowed "
            f"{self.pair_lower[p]:.3f} A)"
        )


def unphysical_summary(predicted: np.ndarray, limits: Limits, topology: Topology, dt_fs: float) -> dict:
    """Per trajectory of predicted (B, F, N, 3): the first unphysical frame, its time and why, and how many."""
    B, F = predicted.shape[:2]
    bad = limits.violated(predicted.reshape(B * F, *predicted.shape[2:])).reshape(B, F)
    trajectories = []
    for b in range(B):
        first = int(bad[b].argmax()) if bad[b].any() else None
        trajectories.append(
            {
                "first_frame": first,
                "first_time_fs": None if first is None else (first + 1) * dt_fs,
                "reason": None if first is None else limits.reason(predicted[b, first], topology),
                "unphysical_frames": int(bad[b].sum()),
            }
        )
    labels = topology.labels(limits.bonds)
    return {
        "thresholds": {"stretch": STRETCH_LIMIT, "compress": COMPRESS_LIMIT, "overlap": OVERLAP_LIMIT},
        "bond_limits": [
            {"bond": label, "lower": lo, "upper": hi}
            for label, lo, hi in zip(labels, limits.bond_lower.tolist(), limits.bond_upper.tolist())
        ],
        "any": bool(bad.any()),
        "fraction": float(bad.mean()),
        "trajectories": trajectories,
    }
