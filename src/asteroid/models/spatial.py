"""Spatial attention within one frame: local (radius graph), global (dense or through latent tokens), gated fusion."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.utils import scatter, softmax

from asteroid.models.neighbors import radius_neighbors

# Edges x channels above which training recomputes a local attention's per-edge tensors in the backward pass
# instead of keeping them: about six (E, C) tensors per layer, which for one 8-frame window of 10,000 atoms
# (1.2 million edges) are over 5 GB. Below it (molecules: ethanol batches have ~10^6) nothing changes.
RECOMPUTE_MIN_EDGE_VALUES = 1 << 24
# Values per (edges, channels) tensor of one chunk of local attention: 16 MB in float32, within a CPU's cache
# hierarchy and below glibc's 32 MB limit above which every block is freshly mapped (and its pages faulted in).
CHUNK_EDGE_VALUES = 1 << 22


class LocalGraph(NamedTuple):
    """Radius graph of a batch of frames with its distance features."""

    edge_index: Tensor  # (2, E) into the flattened M*N nodes, sorted by target node (row 1)
    rbf: Tensor  # (E, num_rbf) Gaussian expansion of the pair distance
    envelope: Tensor  # (E,) smooth cosine cutoff, 1 at distance 0 and 0 at the cutoff
    image: Tensor  # (E, 3) periodic translation of the source atom (zeros without a box), see radius_neighbors


class RadiusGraph(nn.Module):
    """Builds the LocalGraph of frames: neighbours within ``cutoff``, distances in Gaussian RBFs."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.width = cutoff / max(num_rbf - 1, 1)

    def forward(self, pos: Tensor, mask: Tensor, box: Tensor | None = None) -> LocalGraph:
        """pos (M, N, 3) Angstrom, mask (M, N), box (M, 3, 3) periodic cell vectors or None -> LocalGraph.

        Neighbours come from dense pair distances for molecules and from a cell list for large frames."""
        edge_index, distance, image = radius_neighbors(pos, mask, self.cutoff, box)
        rbf = torch.exp(-0.5 * ((distance[:, None] - self.centers) / self.width) ** 2)  # (E, R)
        envelope = 0.5 * (torch.cos(distance * math.pi / self.cutoff) + 1.0)
        envelope = envelope * (distance < self.cutoff)
        return LocalGraph(edge_index, rbf, envelope, image)


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


class LocalAttention(nn.Module):
    """Each atom attends to its radius neighbours; the pair distance biases the logits and filters the values.

    The edges are processed in chunks of about CHUNK_EDGE_VALUES values per (edges, channels) tensor, each chunk
    holding every edge of its target atoms, so the softmax over a neighbourhood is never split: on large systems
    the per-edge tensors stay small (cache-sized, and below the size where malloc maps fresh pages for every
    block). On large graphs under autograd each chunk is recomputed in the backward pass instead of kept (same
    values and gradients, one more forward of this layer): see RECOMPUTE_MIN_EDGE_VALUES.
    """

    def __init__(self, dim: int, heads: int, num_rbf: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.distance_bias = nn.Linear(num_rbf, heads)
        self.distance_filter = nn.Linear(num_rbf, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, graph: LocalGraph) -> Tensor:
        """x (M, N, C), graph over the M*N nodes -> (M, N, C); atoms without neighbours aggregate nothing."""
        M, N, C = x.shape
        q, k, v = self.qkv(x.reshape(M * N, C)).view(M * N, 3, self.heads, -1).unbind(1)  # 3 x (M*N, h, d)
        source, target = graph.edge_index
        recompute = torch.is_grad_enabled() and len(target) * C >= RECOMPUTE_MIN_EDGE_VALUES
        out = x.new_zeros(q.shape)  # (M*N, h, d)
        for start, end, first, last in target_chunks(target, max(1, CHUNK_EDGE_VALUES // C)):
            chunk = (q[first:last], k, v, source[start:end], target[start:end] - first, graph.rbf[start:end],
                     graph.envelope[start:end])
            out[first:last] = checkpoint(self._attend, *chunk, use_reentrant=False) if recompute else \
                self._attend(*chunk)
        return self.out(out.reshape(M, N, C))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, source: Tensor, target: Tensor, rbf: Tensor,
                envelope: Tensor) -> Tensor:
        """Attention-weighted, distance-filtered sum over the neighbours of some consecutive atoms.

        q (n, h, d) of those atoms; k, v (M*N, h, d) of every atom; source (e,) into k, v; target (e,) into q;
        rbf (e, R), envelope (e,) of those edges -> (n, h, d)."""
        head_dim = q.shape[-1]
        logits = (q[target] * k[source]).sum(dim=-1) / math.sqrt(head_dim) + self.distance_bias(rbf)  # (e, h)
        # The envelope after the softmax makes an atom crossing the cutoff fade in and out smoothly.
        weight = softmax(logits, target, num_nodes=len(q)) * envelope[:, None]  # (e, h)
        value_filter = self.distance_filter(rbf).view(-1, self.heads, head_dim)  # (e, h, d)
        messages = v[source] * value_filter * weight[..., None]  # (e, h, d)
        return scatter(messages, target, dim=0, dim_size=len(q), reduce="sum")


def target_chunks(target: Tensor, chunk_edges: int) -> list[tuple[int, int, int, int]]:
    """(start, end, first, last): edges [start, end) of about chunk_edges each, whose targets are the atoms
    [first, last) and hold all of those atoms' edges. target (E,) must be sorted, as radius_neighbors returns it."""
    E = len(target)
    if E == 0:
        return []
    # A cut every chunk_edges edges, moved back to the first edge of the atom it falls in.
    cuts = torch.searchsorted(target, target[chunk_edges::chunk_edges].contiguous())
    bounds = torch.unique(torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), E)]))  # (chunks + 1,)
    atoms = torch.cat([target[bounds[:-1]], target[bounds[1:] - 1] + 1])
    bounds, atoms = bounds.tolist(), atoms.view(2, -1).tolist()
    return list(zip(bounds[:-1], bounds[1:], atoms[0], atoms[1]))


class GlobalAttention(nn.Module):
    """Dense self-attention over all real atoms of a frame (small molecules)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (M, N, C), mask (M, N) -> (M, N, C)."""
        return self.attention(x, x, mask)


class LatentAttention(nn.Module):
    """Global attention through M learned latent tokens: O(N M) per frame instead of the dense O(N^2).

    Atoms write to the tokens (each token is a query over the frame's real atoms, added to its learned value),
    then read from them (each atom is a query over the M updated tokens). Padded atoms are never written; every
    atom reads, and what padded atoms read is discarded downstream. Permutation-equivariant in atoms: the tokens
    carry no atom index.

    Relation to GlobalAttention: when the keys do not depend on the atoms (key weights zero), every attention
    weight is uniform and GlobalAttention returns out(mean over real atoms of value(x)) to every atom. With the
    write step's value = that value map, its output map = identity, tokens = 0, and the read step's value =
    identity, output map = that out, this path returns exactly the same, for any number of tokens
    (tests/test_scale.py builds that case). Away from it, the M tokens are a rank-M summary of the frame.
    """

    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        if tokens < 1:
            raise ValueError(f"latent global attention needs at least one token, got {tokens}")
        self.tokens = nn.Parameter(torch.randn(tokens, dim) / math.sqrt(dim))  # (M_tokens, C)
        self.write = MultiHeadAttention(dim, heads)
        self.read = MultiHeadAttention(dim, heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (M, N, C), mask (M, N) -> (M, N, C)."""
        tokens = self.tokens.expand(x.shape[0], -1, -1)  # (M, M_tokens, C)
        tokens = tokens + self.write(tokens, x, mask)
        return self.read(x, tokens)


class SpatialBlock(nn.Module):
    """Local and/or global attention fused by a per-atom, per-channel sigmoid gate, then a feed-forward.

    Global attention is dense over all atoms (latent_tokens None, for molecules) or through latent_tokens learned
    tokens (LatentAttention, linear in the number of atoms, for large systems).
    Post-norm: residual + LayerNorm after the fused attention and after the feed-forward.
    """

    def __init__(self, dim: int, heads: int, num_rbf: int, local: bool = True, global_: bool = True,
                 latent_tokens: int | None = None):
        super().__init__()
        if not (local or global_):
            raise ValueError("a spatial block needs local or global attention")
        self.local_attention = LocalAttention(dim, heads, num_rbf) if local else None
        self.global_attention = None
        if global_:
            dense = latent_tokens is None
            self.global_attention = GlobalAttention(dim, heads) if dense else LatentAttention(dim, heads, latent_tokens)
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
