"""Scalar-vector building blocks: every ASTEROID layer carries per-atom scalar channels s (..., C), which are
invariant, and vector channels v (..., 3, Cv), which rotate with the molecule.

The rules that keep a layer exactly E(3)-equivariant (as in PaiNN and TorchMD-ET): vectors are only mixed across
channels by linear maps without a bias (so a rotation or reflection of the input rotates or reflects them), scaled
by invariant numbers, or summed with invariant weights; invariants come from scalars, distances and dot
products of vectors. No cross product, so reflections are handled too; no absolute position, so translations are.
"""

import math

import torch
from torch import Tensor, nn


def vector_linear(in_channels: int, out_channels: int) -> nn.Linear:
    """Mixes vector channels (..., 3, Cin) -> (..., 3, Cout); no bias, so rotations commute with it."""
    return nn.Linear(in_channels, out_channels, bias=False)


def softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dimension. Written out because torch's CPU kernel is slow on the short rows of
    attention over a few frames or atoms: 15 ms against 3 ms for 590,000 rows of 8 on one thread."""
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return weights / weights.sum(dim=-1, keepdim=True)


def attention(query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention: query (..., Sq, d), keys (..., Sk, d), values (..., Sk, D), mask broadcastable
    to (..., Sq, Sk) bool (True = attend) -> (..., Sq, D)."""
    logits = query @ keys.transpose(-1, -2) / math.sqrt(query.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return softmax(logits) @ values


class EquivariantAttention(nn.Module):
    """Softmax attention of query tokens over context tokens: weights from scalar channels only (invariant),
    values both scalar and vector channels.

    With ``positions=True`` each context token also carries its position and each query receives, per head, the
    attention-weighted mean position of the context minus its own (a relative vector, so translations cancel),
    mixed into its vector channels: in a molecule, atoms learn where the others are, not just what they carry.
    keys_values() and attend() are split so that decoders can project a context once and reuse it.
    """

    def __init__(self, dim: int, vector_dim: int, heads: int, positions: bool = False):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.vector_value = vector_linear(vector_dim, vector_dim)
        self.out = nn.Linear(dim, dim)
        self.vector_out = vector_linear(vector_dim, vector_dim)
        self.position_out = vector_linear(heads, vector_dim) if positions else None

    def keys_values(self, s: Tensor, v: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """s (X, S, C), v (X, S, 3, Cv), positions (X, S, 3) or None -> keys (X, h, S, d) and the packed values
        (X, h, S, d + 3 dv [+ 3]): scalar values, vector values and positions, one softmax-weighted sum for all."""
        X, S, _ = s.shape
        keys, values = self.key_value(s).view(X, S, 2, self.heads, -1).unbind(2)  # (X, S, h, d) each
        vectors = self.vector_value(v).view(X, S, 3, self.heads, -1).transpose(2, 3).flatten(3)  # (X, S, h, 3 dv)
        packed = [values, vectors]
        if self.position_out is not None:
            packed.append(positions[:, :, None].expand(X, S, self.heads, 3))
        return keys.transpose(1, 2), torch.cat(packed, dim=-1).transpose(1, 2)

    def attend(
        self, s: Tensor, context: tuple[Tensor, Tensor], mask: Tensor | None = None, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """s (X, Sq, C) queries, context from keys_values, mask (X, Sk) bool (True = attend), positions (X, Sq, 3)
        of the queries when built with positions -> scalar update (X, Sq, C), vector update (X, Sq, 3, Cv)."""
        X, Sq, C = s.shape
        keys, values = context
        query = self.query(s).view(X, Sq, self.heads, -1).transpose(1, 2)  # (X, h, Sq, d)
        out = attention(query, keys, values, None if mask is None else mask[:, None, None, :]).transpose(1, 2)
        # (X, Sq, h, d + 3 dv [+ 3])
        d = C // self.heads
        vector_dim = self.vector_out.in_features
        scalars = self.out(out[..., :d].reshape(X, Sq, C))
        vectors = out[..., d : d + 3 * vector_dim // self.heads].reshape(X, Sq, self.heads, 3, -1)
        vectors = self.vector_out(vectors.transpose(2, 3).reshape(X, Sq, 3, vector_dim))  # (X, Sq, 3, Cv)
        if self.position_out is not None:
            relative = out[..., -3:] - positions[:, :, None]  # (X, Sq, h, 3)
            vectors = vectors + self.position_out(relative.transpose(2, 3))
        return scalars, vectors

    def forward(
        self, s: Tensor, v: Tensor, mask: Tensor | None = None, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Self-attention: s (X, S, C), v (X, S, 3, Cv), mask (X, S), positions (X, S, 3) -> updates of s and v."""
        return self.attend(s, self.keys_values(s, v, positions), mask, positions)


class EquivariantFeedForward(nn.Module):
    """PaiNN's update block as a residual feed-forward: s <- LayerNorm(s + a(s, u.w)), v <- v + b(s, u.w) w,
    with u, w two channel mixes of v, so scalars read the vectors' lengths and angles and vectors are rescaled by
    invariants. The dot products are layer-normalised first: they grow as the square of the motion, and a model fed
    its own forecasts must not turn a large step into a larger gate."""

    def __init__(self, dim: int, vector_dim: int):
        super().__init__()
        self.vector_dim = vector_dim
        self.mix = vector_linear(vector_dim, 2 * vector_dim)
        self.net = nn.Sequential(nn.Linear(dim + vector_dim, dim), nn.SiLU(), nn.Linear(dim, dim + vector_dim))
        self.dot_norm = nn.LayerNorm(vector_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """s (..., C), v (..., 3, Cv) -> same shapes."""
        u, w = self.mix(v).split(self.vector_dim, dim=-1)  # (..., 3, Cv) each
        update, gate = self.net(torch.cat([s, self.dot_norm((u * w).sum(dim=-2))], dim=-1)).split(
            [s.shape[-1], self.vector_dim], dim=-1
        )
        return self.norm(s + update), v + gate[..., None, :] * w
