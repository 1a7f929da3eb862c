"""Geometry of coordinates that every layer measures with: which atoms are covalently bonded, and the RMSD of two
structures after optimal superposition."""

from __future__ import annotations

import torch
from ase.data import covalent_radii

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
