"""Geometry of frames (..., N, 3) Angstrom: bond lengths, angles, dihedrals, radius of gyration, and the topology
that says which atoms form them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import atomic_masses

from asteroid.data.geometry import covalent_bonds
from asteroid.data.mdtraj_files import atom_names


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
        """The topology of one frame (N, 3); see the asteroid.analysis docstring for what counts."""
        bonds = covalent_bonds(z, frame).T.numpy().reshape(-1, 2)  # (E, 2), i < j
        neighbours = [[] for _ in z]
        for i, j in bonds:
            neighbours[i].append(j)
            neighbours[j].append(i)
        angles = [
            (i, j, k)
            for j, around in enumerate(neighbours)
            for n, i in enumerate(sorted(around))
            for k in sorted(around)[n + 1 :]
        ]

        def heaviest(candidates):
            return min(candidates, key=lambda a: (-z[a], a)) if candidates else None

        dihedrals = []
        for j, k in bonds:
            if z[j] > 1 and z[k] > 1:
                i = heaviest([a for a in neighbours[j] if a != k])
                l = heaviest([a for a in neighbours[k] if a not in (j, i)])  # not i: a three-membered ring
                if i is not None and l is not None:
                    dihedrals.append((i, j, k, l))
        return cls(
            np.asarray(z),
            bonds.astype(np.int64),
            np.array(angles, dtype=np.int64).reshape(-1, 3),
            np.array(dihedrals, dtype=np.int64).reshape(-1, 4),
        )

    def labels(self, atoms: np.ndarray) -> list[str]:
        """'C1-C2', 'C2-C1-H1', ... for rows of atom indices (atoms named as in our PDB files: `atom_names`)."""
        names = atom_names(self.z)
        return ["-".join(names[a] for a in row) for row in atoms]

    def features(self, R: np.ndarray) -> dict[str, np.ndarray]:
        """(M, K) bond lengths, angles, dihedrals and (M, 1) radius of gyration of frames R (M, N, 3)."""
        return {
            "bond_length": bond_lengths(R, self.bonds),
            "angle": bond_angles(R, self.angles),
            "dihedral": dihedral_angles(R, self.dihedrals),
            "radius_of_gyration": radius_of_gyration(R, self.z)[:, None],
        }

    def feature_labels(self) -> dict[str, list[str]]:
        return {
            "bond_length": self.labels(self.bonds),
            "angle": self.labels(self.angles),
            "dihedral": self.labels(self.dihedrals),
            "radius_of_gyration": ["Rg"],
        }


NAMES = {
    "bond_length": "bond length",
    "angle": "angle",
    "dihedral": "dihedral",
    "radius_of_gyration": "radius of gyration",
}
UNITS = {"bond_length": "Å", "angle": "deg", "dihedral": "deg", "radius_of_gyration": "Å"}
