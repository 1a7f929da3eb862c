"""Training-time perturbations of windows: random rotations (and rotating a batch with them), history noise."""

from __future__ import annotations

import torch


def random_rotations(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n, 3, 3) rotation matrices drawn uniformly (QR of a Gaussian matrix, sign-fixed, det +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, device=device, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.det(q) < 0, :, 0] *= -1
    return q.to(dtype)


def rotate(vectors: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """vectors (B, ..., 3), e.g. frames (B, T, N, 3) or cells (B, 3, 3), rotated by rotation (B, 3, 3) about the
    origin."""
    return torch.einsum("bij,b...j->b...i", rotation, vectors)


def rotate_windows(batch: dict, rotation: torch.Tensor) -> dict:
    """The batch with its history, target and periodic cell (when it has one) rotated together."""
    return {**batch, **{key: rotate(batch[key], rotation) for key in ("history", "target", "box") if key in batch}}


def random_walk_noise(history: torch.Tensor, std: float) -> torch.Tensor:
    """(B, H, N, 3) noise that accumulates over the history frames and reaches `std` Angstrom on the last one.

    Added to the history in training (targets untouched), it teaches the model to pull a perturbed history back
    toward the truth: a rollout feeds the model its own slightly wrong predictions, and without this their errors
    compound (the noise model of Sanchez-Gonzalez et al. 2020, learned simulators).
    """
    steps = torch.randn_like(history) * (std / history.shape[1] ** 0.5)
    return steps.cumsum(dim=1)
