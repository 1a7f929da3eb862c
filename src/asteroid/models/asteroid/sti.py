"""Spatiotemporal information (STI) transformation: delay vectors from the encoder state.

Delay (Hankel) layout: history frame t = 0..H-1 has the delay vector Y^t = (y^t, ..., y^{t+L-1}), so entry
(t, j) holds absolute time t + j; an anti-diagonal t + j = a holds one time point a = 0..H+L-2. In
training, times 0..H+P-1 (history and targets) are known; times >= H are the future.

Coordinates here are in "STI units": displacement from the last history frame divided by one length
(the model uses its largest per-step displacement scale), so history and future entries are O(1).
"""

import torch
from torch import Tensor, nn

from asteroid.models.asteroid.layers import vector_linear
from asteroid.models.frames import sequences_to_atoms


def hankel_time_index(history: int, delay: int, device: torch.device | None = None) -> Tensor:
    """(H, L) LongTensor: absolute time t + j held by delay entry (t, j)."""
    t = torch.arange(history, device=device)
    j = torch.arange(delay, device=device)
    return t[:, None] + j[None, :]


def known_mask(history: int, delay: int, horizon: int, device: torch.device | None = None) -> Tensor:
    """(H, L) bool: entry (t, j) is known in training (t + j <= H + P - 1: history or target frames)."""
    return hankel_time_index(history, delay, device) <= history + horizon - 1


def future_mask(history: int, delay: int, device: torch.device | None = None) -> Tensor:
    """(H, L) bool: entry (t, j) lies in the future of the window (t + j >= H)."""
    return hankel_time_index(history, delay, device) >= history


def hankel(frames: Tensor, history: int, delay: int) -> Tensor:
    """Delay vectors of a frame sequence: frames (B, T, N, 3) -> (B, H, N, L, 3) with entry (t, j) = frames[:, t + j].

    Times beyond T - 1 are clamped to the last frame; mask them with known_mask.
    """
    times = hankel_time_index(history, delay, frames.device).clamp(max=frames.shape[1] - 1)  # (H, L)
    return frames[:, times].permute(0, 1, 3, 2, 4)  # (B, H, L, N, 3) -> (B, H, N, L, 3)


def antidiagonal_mean(delays: Tensor) -> Tensor:
    """Mean over the entries of each time point: delays (B, H, N, L, 3) -> (B, H + L - 1, N, 3)."""
    B, H, N, L, D = delays.shape
    times = hankel_time_index(H, L, delays.device).flatten()  # (H*L,)
    entries = delays.permute(0, 1, 3, 2, 4).reshape(B, H * L, N, D)
    sums = delays.new_zeros(B, H + L - 1, N, D).index_add_(1, times, entries)
    # entries per time k: min(k + 1, H, L, H + L - 1 - k), from the shape alone (a bincount of times would be the
    # same numbers, but a data-dependent shape to torch.compile)
    k = torch.arange(H + L - 1, device=delays.device)
    counts = torch.minimum(torch.minimum(k + 1, H + L - 1 - k), k.new_tensor(min(H, L))).to(delays.dtype)
    return sums / counts[:, None, None]


def _masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    """Mean of values over the entries where the broadcast weight is 1."""
    weight = weight.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def primary_loss(delays: Tensor, frames: Tensor, mask: Tensor) -> Tensor:
    """MSE of the delay vectors against every known entry.

    delays (B, H, N, L, 3); frames (B, T, N, 3) the known times 0..T-1 (history and targets); mask (B, N).
    """
    B, H, N, L, _ = delays.shape
    truth = hankel(frames, H, L)  # (B, H, N, L, 3)
    known = known_mask(H, L, frames.shape[1] - H, delays.device)  # (H, L)
    weight = known[None, :, None, :, None] & mask[:, None, :, None, None]
    return _masked_mean((delays - truth) ** 2, weight)


def consistency_loss(delays: Tensor, mask: Tensor) -> Tensor:
    """Variance along each anti-diagonal (predictions of one time from different origins), mean over entries."""
    H, L = delays.shape[1], delays.shape[3]
    consensus = hankel(antidiagonal_mean(delays), H, L)  # (B, H, N, L, 3)
    return _masked_mean((delays - consensus) ** 2, mask[:, None, :, None, None])


def conjugate_loss(reconstruction: Tensor, frames: Tensor, mask: Tensor) -> Tensor:
    """MSE of Psi(Phi(X^t)) against X^t: reconstruction, frames (B, H, N, 3), mask (B, N)."""
    return _masked_mean((reconstruction - frames) ** 2, mask[:, None, :, None])


class STIHead(nn.Module):
    """Phi: a history token (s, v) -> the delay vector of the atom's displacement, L vectors in STI units.

    Entry j is a fixed channel mix of the token's vectors, rescaled by an invariant gate of its scalars: equivariant,
    and cheap enough to run at every forecast (its anti-diagonal means seed the decoder)."""

    def __init__(self, dim: int, vector_dim: int, delay: int):
        super().__init__()
        self.delay = delay
        self.vectors = vector_linear(vector_dim, delay)
        self.gate = nn.Linear(dim, delay)

    def forward(self, s: Tensor, v: Tensor, batch: int) -> Tensor:
        """s (B*N, H, C), v (B*N, H, 3, Cv) -> delays (B, H, N, L, 3)."""
        delays = (self.vectors(v) * (1.0 + self.gate(s))[:, :, None]).transpose(-1, -2)  # (B*N, H, L, 3)
        return sequences_to_atoms(delays, batch)


class ConjugateHead(nn.Module):
    """Psi: a delay vector (L vectors) -> the atom's displacement at its origin frame, in STI units: a weighted sum
    of the L vectors whose weights are a function of their dot products (the L x L Gram matrix, invariant)."""

    def __init__(self, dim: int, delay: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(delay * delay, dim), nn.SiLU(), nn.Linear(dim, delay))

    def forward(self, delays: Tensor) -> Tensor:
        """delays (B, H, N, L, 3) -> frames (B, H, N, 3)."""
        gram = delays @ delays.transpose(-1, -2)  # (B, H, N, L, L)
        weights = self.net(gram.flatten(-2))  # (B, H, N, L)
        return (weights[..., None] * delays).sum(dim=-2)
