"""Spatial attention within one frame: local (radius graph), global (dense) and their gated fusion."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from asteroid.models.neighbors import radius_neighbors


class LocalGraph(NamedTuple):
    """Radius graph of a batch of frames with its distance features."""

    edge_index: Tensor  # (2, E) into the flattened M*N nodes
    rbf: Tensor  # (E, num_rbf) Gaussian expansion of the pair distance
    envelope: Tensor  # (E,) smooth cosine cutoff, 1 at distance 0 and 0 at the cutoff


class RadiusGraph(nn.Module):
    """Builds the LocalGraph of frames: neighbours within ``cutoff``, distances in Gaussian RBFs."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.width = cutoff / max(num_rbf - 1, 1)

    def forward(self, pos: Tensor, mask: Tensor) -> LocalGraph:
        """pos (M, N, 3) Angstrom, mask (M, N) -> LocalGraph."""
        edge_index, distance = radius_neighbors(pos, mask, self.cutoff)
        rbf = torch.exp(-0.5 * ((distance[:, None] - self.centers) / self.width) ** 2)  # (E, R)
        envelope = 0.5 * (torch.cos(distance * math.pi / self.cutoff) + 1.0)
        envelope = envelope * (distance < self.cutoff)
        return LocalGraph(edge_index, rbf, envelope)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of query sequences over context sequences (no positional terms); heads divide dim.

    keys_values() and attend() are split so that decoders can project a context once and reuse it.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, context: Tensor) -> Tensor:
        """context (X, Sk, C) -> stacked keys and values (2, X, h, Sk, d)."""
        X, Sk, _ = context.shape
        return self.key_value(context).view(X, Sk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)

    def attend(self, query: Tensor, keys_values: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """query (X, Sq, C), keys_values (2, X, h, Sk, d), context_mask (X, Sk) bool (True = attend) -> (X, Sq, C)."""
        X, Sq, C = query.shape
        q = self.query(query).view(X, Sq, self.heads, -1).transpose(1, 2)  # (X, h, Sq, d)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, keys_values[0], keys_values[1], attn_mask=attn_mask)  # (X, h, Sq, d)
        return self.out(out.transpose(1, 2).reshape(X, Sq, C))

    def forward(self, query: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """query (X, Sq, C), context (X, Sk, C), context_mask (X, Sk) bool (True = attend) -> (X, Sq, C)."""
        return self.attend(query, self.keys_values(context), context_mask)


class LocalAttention(MessagePassing):
    """Each atom attends to its radius neighbours; the pair distance biases the logits and filters the values."""

    def __init__(self, dim: int, heads: int, num_rbf: int):
        super().__init__(aggr="add", node_dim=0)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.distance_bias = nn.Linear(num_rbf, heads)
        self.distance_filter = nn.Linear(num_rbf, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, graph: LocalGraph) -> Tensor:
        """x (M, N, C), graph over the M*N nodes -> (M, N, C); atoms without neighbours aggregate nothing."""
        M, N, C = x.shape
        q, k, v = self.qkv(x.reshape(M * N, C)).view(M * N, 3, self.heads, -1).unbind(1)  # 3 x (M*N, h, d)
        value_filter = self.distance_filter(graph.rbf).view(-1, self.heads, C // self.heads)  # (E, h, d)
        out = self.propagate(
            graph.edge_index,
            q=q,
            k=k,
            v=v,
            bias=self.distance_bias(graph.rbf),
            value_filter=value_filter,
            envelope=graph.envelope,
        )  # (M*N, h, d)
        return self.out(out.reshape(M, N, C))

    def message(self, q_i, k_j, v_j, bias, value_filter, envelope, index, ptr, size_i):
        logits = (q_i * k_j).sum(dim=-1) / math.sqrt(q_i.shape[-1]) + bias  # (E, h)
        # The envelope after the softmax makes an atom crossing the cutoff fade in and out smoothly.
        weight = softmax(logits, index, ptr, size_i) * envelope[:, None]
        return v_j * value_filter * weight[..., None]  # (E, h, d)


class GlobalAttention(nn.Module):
    """Dense self-attention over all real atoms of a frame (small molecules)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (M, N, C), mask (M, N) -> (M, N, C)."""
        return self.attention(x, x, mask)


class SpatialBlock(nn.Module):
    """Local and/or global attention fused by a per-atom, per-channel sigmoid gate, then a feed-forward.

    Post-norm: residual + LayerNorm after the fused attention and after the feed-forward.
    """

    def __init__(self, dim: int, heads: int, num_rbf: int, local: bool = True, global_: bool = True):
        super().__init__()
        if not (local or global_):
            raise ValueError("a spatial block needs local or global attention")
        self.local_attention = LocalAttention(dim, heads, num_rbf) if local else None
        self.global_attention = GlobalAttention(dim, heads) if global_ else None
        self.gate = nn.Linear(2 * dim, dim) if local and global_ else None
        self.attention_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.feed_forward_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor, graph: LocalGraph | None) -> Tensor:
        """x (M, N, C), mask (M, N), graph (None when local attention is off) -> (M, N, C)."""
        if self.local_attention is None:
            update = self.global_attention(x, mask)
        elif self.global_attention is None:
            update = self.local_attention(x, graph)
        else:
            local = self.local_attention(x, graph)
            dense = self.global_attention(x, mask)
            gate = torch.sigmoid(self.gate(torch.cat([local, dense], dim=-1)))
            update = gate * local + (1.0 - gate) * dense
        x = self.attention_norm(x + update)
        return self.feed_forward_norm(x + self.feed_forward(x))
