"""Frame tensors: velocities by frame differences, and the (B, T, N) <-> (B*N, T) reshapes between a batch of
frames and one time sequence per atom."""

from __future__ import annotations

import torch
from torch import Tensor


def frame_velocities(frames: Tensor) -> Tensor:
    """Backward frame differences (B, T, N, 3); the first frame reuses the second's (zeros if T == 1)."""
    if frames.shape[1] == 1:
        return torch.zeros_like(frames)
    step = frames[:, 1:] - frames[:, :-1]
    return torch.cat([step[:, :1], step], dim=1)


def atoms_to_sequences(x: Tensor) -> Tensor:
    """(B, T, N, ...) -> (B*N, T, ...): one time sequence per atom."""
    B, T, N = x.shape[:3]
    return x.transpose(1, 2).reshape(B * N, T, *x.shape[3:])


def sequences_to_atoms(x: Tensor, batch: int) -> Tensor:
    """(B*N, T, ...) -> (B, T, N, ...), inverse of atoms_to_sequences."""
    BN, T = x.shape[:2]
    return x.view(batch, BN // batch, T, *x.shape[2:]).transpose(1, 2)
