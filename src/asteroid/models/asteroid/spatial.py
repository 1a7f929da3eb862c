"""Spatial attention among the atoms of one frame: local (radius graph), global (dense or through latent tokens),
fused by an invariant gate. Scalars and vectors in, scalars and vectors out (see layers.py)."""

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import scatter
from torch_geometric.utils import softmax as edge_softmax

from asteroid.models.asteroid.layers import EquivariantAttention, EquivariantFeedForward, softmax, vector_linear
from asteroid.models.neighbors import DenseGraph, LocalGraph

# Edges x channels above which training recomputes the local attention's per-edge tensors in the backward pass
# instead of keeping them: about six (E, C) tensors per layer, which for one frame of 10,000 atoms (1.2 million
# edges) are over a GB. Below it (molecules: ethanol batches have ~10^5) nothing changes.
RECOMPUTE_MIN_EDGE_VALUES = 1 << 24


class LocalAttention(nn.Module):
    """Each atom attends to its radius neighbours (TorchMD-ET's equivariant attention with a softmax):

    weight_ij = softmax_j(q_i . k_j / sqrt(d) + bias(rbf_ij)) * envelope_ij, per head;
    scalar message = weight_ij * value_j * filter(rbf_ij);
    vector message = weight_ij * (a_ij * (W v_j) + b_ij * r_ij), with a_ij, b_ij invariant (from the filtered
    value) and r_ij the vector from atom i to j's image, in units of the cutoff.
    The envelope after the softmax makes an atom crossing the cutoff fade in and out smoothly.
    """

    def __init__(self, dim: int, vector_dim: int, heads: int, num_rbf: int):
        super().__init__()
        self.heads = heads
        self.vector_dim = vector_dim
        self.query_key = nn.Linear(dim, 2 * dim)
        self.value = nn.Linear(dim, dim + 2 * vector_dim)
        self.distance_bias = nn.Linear(num_rbf, heads, bias=False)  # a constant logit cancels in the softmax
        self.distance_filter = nn.Linear(num_rbf, dim + 2 * vector_dim)
        self.vector_value = vector_linear(vector_dim, vector_dim)
        self.out = nn.Linear(dim, dim)
        self.vector_out = vector_linear(vector_dim, vector_dim)

    def forward(self, s: Tensor, v: Tensor, graph: LocalGraph | DenseGraph, relative: Tensor) -> tuple[Tensor, Tensor]:
        """s (M, N, C), v (M, N, 3, Cv), the graph over the M*N atoms and relative = (x_j + image - x_i) / cutoff:
        (E, 3) on a LocalGraph's edges, (M, N, N, 3) on a DenseGraph -> updates (M, N, C), (M, N, 3, Cv); atoms
        without neighbours receive nothing."""
        M, N, C = s.shape
        if isinstance(graph, DenseGraph):
            s_update, v_update = self._attend_dense(s, v, graph, relative)
        else:
            recompute = torch.is_grad_enabled() and len(relative) * C >= RECOMPUTE_MIN_EDGE_VALUES
            flat = s.reshape(M * N, C), v.reshape(M * N, 3, -1)
            parts = (*flat, graph.edge_index, graph.rbf, graph.envelope, relative)
            s_update, v_update = (
                checkpoint(self._attend, *parts, use_reentrant=False) if recompute else self._attend(*parts)
            )
            s_update, v_update = s_update.view(M, N, C), v_update.view(M, N, 3, -1)
        return self.out(s_update), self.vector_out(v_update)

    def _attend_dense(self, s: Tensor, v: Tensor, graph: DenseGraph, relative: Tensor) -> tuple[Tensor, Tensor]:
        """`_attend` over every target i and source j of each frame, the pairs off the graph weighted zero."""
        M, N, C = s.shape
        d = C // self.heads
        query, key = self.query_key(s).view(M, N, 2, self.heads, d).unbind(2)  # (M, N, h, d) each
        logits = torch.einsum("mihd,mjhd->mijh", query, key) / math.sqrt(d) + self.distance_bias(graph.rbf)
        # a large finite fill, not -inf: a row without neighbours then has uniform weights, zeroed by the envelope
        logits = logits.masked_fill(~graph.edge[..., None], -1e9).transpose(2, 3)  # (M, N_i, h, N_j)
        weight = softmax(logits).transpose(2, 3) * graph.envelope[..., None]  # (M, N_i, N_j, h)
        values = self.value(s)[:, None] * self.distance_filter(graph.rbf)  # (M, N_i, N_j, C + 2 Cv)
        scalars, along_vectors, along_bond = values.split([C, self.vector_dim, self.vector_dim], dim=-1)
        scalars = torch.einsum("mijhd,mijh->mihd", scalars.view(M, N, N, self.heads, d), weight).reshape(M, N, C)
        vector_weight = weight.repeat_interleave(self.vector_dim // self.heads, dim=-1)  # (M, N_i, N_j, Cv)
        vectors = torch.einsum("mijc,mjxc->mixc", along_vectors * vector_weight, self.vector_value(v))
        vectors = vectors + torch.einsum("mijc,mijx->mixc", along_bond * vector_weight, relative)  # (M, N, 3, Cv)
        return scalars, vectors

    def _attend(
        self, s: Tensor, v: Tensor, edge_index: Tensor, rbf: Tensor, envelope: Tensor, relative: Tensor
    ) -> tuple[Tensor, Tensor]:
        V, C = s.shape
        source, target = edge_index
        query, key = self.query_key(s).view(V, 2, self.heads, -1).unbind(1)  # (V, h, d) each
        logits = (query.index_select(0, target) * key.index_select(0, source)).sum(-1) / math.sqrt(C // self.heads)
        weight = edge_softmax(logits + self.distance_bias(rbf), target, num_nodes=V) * envelope[:, None]  # (E, h)
        values = self.value(s).index_select(0, source) * self.distance_filter(rbf)  # (E, C + 2 Cv)
        scalars, along_vectors, along_bond = values.split([C, self.vector_dim, self.vector_dim], dim=-1)
        scalars = (scalars.view(-1, self.heads, C // self.heads) * weight[..., None]).flatten(1)  # (E, C)
        vector_weight = weight.repeat_interleave(self.vector_dim // self.heads, dim=1)[:, None]  # (E, 1, Cv)
        vectors = along_vectors[:, None] * self.vector_value(v).index_select(0, source)
        vectors = (vectors + relative[:, :, None] * along_bond[:, None]) * vector_weight  # (E, 3, Cv)
        return (
            scatter(scalars, target, dim=0, dim_size=V, reduce="sum"),
            scatter(vectors, target, dim=0, dim_size=V, reduce="sum"),
        )


class LatentAttention(nn.Module):
    """Global attention through M learned latent tokens: O(N M) per frame instead of the dense O(N^2).

    Atoms write to the tokens (each token is a query over the frame's real atoms; its vectors start at zero and
    collect the atoms' vectors), then read from them (each atom is a query over the M updated tokens). Padded atoms
    are never written; every atom reads, and what padded atoms read is discarded downstream. The tokens carry no
    atom index and no position, so this stays permutation and E(3) equivariant.
    """

    def __init__(self, dim: int, vector_dim: int, heads: int, tokens: int):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(tokens, dim) / math.sqrt(dim))  # (M_tokens, C)
        self.write = EquivariantAttention(dim, vector_dim, heads)
        self.read = EquivariantAttention(dim, vector_dim, heads)

    def forward(self, s: Tensor, v: Tensor, mask: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """s (M, N, C), v (M, N, 3, Cv), mask (M, N); positions unused -> updates of s and v."""
        M, N, C = s.shape
        tokens = self.tokens.expand(M, -1, -1)  # (M, T, C)
        written_s, written_v = self.write.attend(tokens, self.write.keys_values(s, v), mask)
        return self.read.attend(s, self.read.keys_values(tokens + written_s, written_v))


class DenseAttention(nn.Module):
    """Global attention over all real atoms of a frame (molecules), with relative positions in open space."""

    def __init__(self, dim: int, vector_dim: int, heads: int):
        super().__init__()
        self.attention = EquivariantAttention(dim, vector_dim, heads, positions=True)

    def forward(self, s: Tensor, v: Tensor, mask: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """s (M, N, C), v (M, N, 3, Cv), mask (M, N), positions (M, N, 3) centred, in cutoff units, or None in a
        periodic cell (where an absolute position means nothing: the relative-position term is then zero)."""
        if positions is None:
            positions = s.new_zeros(*s.shape[:2], 3)
        return self.attention(s, v, mask, positions)


class SpatialBlock(nn.Module):
    """Local and/or global attention fused by a per-atom, per-channel invariant gate (read from the atom's state,
    so each atom decides how much it listens to its neighbours and how much to the whole molecule), then the
    feed-forward.

    Global attention is dense over all atoms (latent_tokens None, for molecules) or through latent_tokens learned
    tokens (linear in the number of atoms, for large systems). Post-norm on the scalars.
    """

    def __init__(
        self,
        dim: int,
        vector_dim: int,
        heads: int,
        num_rbf: int,
        local: bool = True,
        global_: bool = True,
        latent_tokens: int | None = None,
    ):
        super().__init__()
        if not (local or global_):
            raise ValueError("a spatial block needs local or global attention")
        self.vector_dim = vector_dim
        self.local_attention = LocalAttention(dim, vector_dim, heads, num_rbf) if local else None
        self.global_attention = None
        if global_:
            self.global_attention = (
                DenseAttention(dim, vector_dim, heads)
                if latent_tokens is None
                else LatentAttention(dim, vector_dim, heads, latent_tokens)
            )
        self.gate = nn.Linear(dim, dim + vector_dim) if local and global_ else None
        self.norm = nn.LayerNorm(dim)
        self.feed_forward = EquivariantFeedForward(dim, vector_dim)

    def forward(
        self,
        s: Tensor,
        v: Tensor,
        mask: Tensor,
        graph: LocalGraph | DenseGraph | None,
        relative: Tensor | None,
        positions: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """s (M, N, C), v (M, N, 3, Cv), mask (M, N), graph and relative (see LocalAttention; None when local
        attention is off), positions (see DenseAttention) -> same shapes."""
        C = s.shape[-1]
        if self.local_attention is not None:
            local_s, local_v = self.local_attention(s, v, graph, relative)
        if self.global_attention is not None:
            global_s, global_v = self.global_attention(s, v, mask, positions)
        if self.local_attention is None:
            update_s, update_v = global_s, global_v
        elif self.global_attention is None:
            update_s, update_v = local_s, local_v
        else:
            gate = torch.sigmoid(self.gate(s))
            gate_s, gate_v = gate.split([C, self.vector_dim], dim=-1)
            gate_v = gate_v[..., None, :]
            update_s = gate_s * local_s + (1.0 - gate_s) * global_s
            update_v = gate_v * local_v + (1.0 - gate_v) * global_v
        return self.feed_forward(self.norm(s + update_s), v + update_v)
