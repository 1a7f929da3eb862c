"""The E(3)-equivariant pieces the graph baselines (EGNN, ESTAG, EGNO) share, after EGNN (Satorras et al. 2021).

Node tensors are laid out (V, T, ...) with V = B*N flattened atoms and T a time axis (1 for EGNN, the H history
frames for ESTAG, the P output times for EGNO): every time slice is a signal on the same radius graph.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from asteroid.errors import ConfigError
from asteroid.models.base import ForecastModel
from asteroid.models.frames import frame_velocities
from asteroid.models.neighbors import RadiusGraph


class Edges(NamedTuple):
    """A radius graph over V nodes with invariant edge attributes."""

    index: Tensor  # (2, E) row 0 = source j, row 1 = target i
    attr: Tensor  # (E, A) invariant attributes
    envelope: Tensor  # (E,) smooth cosine cutoff
    normaliser: Tensor  # (V, 1, 1) 1 + sum of incoming envelopes
    image: Tensor  # (E, 3) periodic translation of the source to its image near the target (zeros without a box)


class GraphInputs(NamedTuple):
    """What every graph baseline derives from a batch before its own layers."""

    frames: Tensor  # (B, H, N, 3) centred on the last frame's centroid, padding zeroed
    centroid: Tensor  # (B, 1, 1, 3)
    velocity: Tensor  # (B, H, N, 3) Angstrom per history frame
    node: Tensor  # (B*N, C) atom type + history speed embedding
    edges: Edges


def mlp(dim: int, out: int) -> nn.Sequential:
    """Two-layer perceptron dim -> dim -> out with SiLU."""
    return nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, out))


def aggregate(values: Tensor, edges: Edges) -> Tensor:
    """Envelope-normalised sum over incoming edges: values (E, T, D) -> (V, T, D).

    1 + sum of envelopes instead of the neighbour count, so the normaliser is smooth as atoms cross the cutoff.
    """
    V = edges.normaliser.shape[0]
    total = values.new_zeros(V, *values.shape[1:]).index_add_(0, edges.index[1], values)
    return total / edges.normaliser


class EdgeMessages(nn.Module):
    """EGNN's edge function m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij), per time slice.

    The first linear layer of phi_e acts on h_i and h_j separately, applied on nodes before gathering onto edges.
    """

    def __init__(self, dim: int, edge_dim: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.source = nn.Linear(dim, dim)
        self.target = nn.Linear(dim, dim, bias=False)
        self.distance = nn.Linear(1, dim, bias=False)
        self.edge = nn.Linear(edge_dim, dim, bias=False)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, h: Tensor, x: Tensor, edges: Edges) -> tuple[Tensor, Tensor]:
        """h (V, T, C), x (V, T, 3) -> messages (E, T, C), directions (x_i - x_j) / sqrt(|x_i - x_j|^2 + 1) (E, T, 3).

        The +1 keeps the direction smooth (no 0/0) and bounded, as EGNN's normalised coordinate differences.
        """
        source, target = edges.index
        # index_select, not x[index]: its backward is index_add, much faster on CPU than an accumulating index_put.
        difference = x.index_select(0, target) - x.index_select(0, source) - edges.image[:, None]  # (E, T, 3)
        squared = difference.square().sum(dim=-1, keepdim=True)  # (E, T, 1)
        pair = self.distance(squared / self.cutoff**2) + self.edge(edges.attr)[:, None]  # (E, T, C)
        messages = self.out(self.source(h).index_select(0, source) + self.target(h).index_select(0, target) + pair)
        return messages * edges.envelope[:, None, None], difference / (squared + 1.0).sqrt()


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer with EGNN's N-body velocity term (Satorras et al. 2021, eqs. 3-7):

    x_i += unit * sum_j (x_i - x_j) phi_x(m_ij) / normaliser + phi_v(h_i) v_i,  h_i += phi_h(h_i, sum_j m_ij).
    `unit` (Angstrom, broadcastable to (T, 1)) sizes the pairwise update like the motion being forecast.
    """

    def __init__(self, dim: int, edge_dim: int, cutoff: float):
        super().__init__()
        self.messages = EdgeMessages(dim, edge_dim, cutoff)
        # Linear, not an MLP: m_ij already ends in a nonlinearity, and this runs on every edge and time.
        self.coordinate_weight = nn.Linear(dim, 1)
        self.velocity_weight = mlp(dim, 1)
        self.node = nn.Sequential(nn.Linear(2 * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, x: Tensor, velocity: Tensor, edges: Edges, unit: Tensor) -> tuple[Tensor, Tensor]:
        """h (V, T, C), x (V, T, 3), velocity (V, T or 1, 3) -> updated h, x."""
        messages, directions = self.messages(h, x, edges)
        pairwise = aggregate(directions * self.coordinate_weight(messages), edges)  # (V, T, 3)
        x = x + unit * pairwise + self.velocity_weight(h) * velocity
        h = self.norm(h + self.node(torch.cat([h, aggregate(messages, edges)], dim=-1)))
        return h, x


class MultiStepHead(nn.Module):
    """P equivariant displacements per atom: out_k,i = sum_j dir_ij phi_k(m_ij) / normaliser + phi_v,k(h_i) v_i."""

    def __init__(self, dim: int, edge_dim: int, cutoff: float, steps: int):
        super().__init__()
        self.messages = EdgeMessages(dim, edge_dim, cutoff)
        self.pair_weight = nn.Linear(dim, steps)
        self.velocity_weight = mlp(dim, steps)

    def forward(self, h: Tensor, x: Tensor, velocity: Tensor, edges: Edges) -> Tensor:
        """h (V, 1, C), x (V, 1, 3), velocity (V, 1, 3) in output units -> (V, P, 3) in output units."""
        messages, directions = self.messages(h, x, edges)  # (E, 1, C), (E, 1, 3)
        pairwise = aggregate(self.pair_weight(messages).transpose(1, 2) * directions, edges)  # (V, P, 3)
        return pairwise + self.velocity_weight(h).transpose(1, 2) * velocity


class GraphForecaster(ForecastModel):
    """Input side shared by the graph baselines: checks, centring, velocities, radius graph of the last frame,
    atom type + history speed embedding. Only centred coordinates, their differences and norms enter, and padded
    atoms are zeroed and have no edges, so subclasses built from the layers above are E(3)- and permutation
    equivariant and padding-safe. They forecast directly: `target` and `sampling_prob` are ignored.
    """

    def __init__(self, history: int, horizon: int, hidden: int, cutoff: float, max_z: int, num_rbf: int = 16):
        super().__init__(history, horizon)
        if cutoff <= 0:
            raise ConfigError(f"model: cutoff={cutoff} Angstrom must be positive")
        if hidden < 1:
            raise ConfigError(f"model: hidden={hidden} must be >= 1")
        self.max_z = max_z
        self.num_rbf = num_rbf
        self.radius_graph = RadiusGraph(cutoff, num_rbf)
        self.atom_type = nn.Embedding(max_z + 1, hidden)
        self.speed = nn.Linear(history, hidden)

    def prepare(self, history: Tensor, z: Tensor, mask: Tensor, box: Tensor | None = None) -> GraphInputs:
        """history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), box (B, 3, 3) periodic cell or None
        -> GraphInputs (edge attributes: distance RBFs; under a box, edges reach periodic images)."""
        B, H, N, _ = history.shape
        self.check_inputs(history, z, max_z=self.max_z)
        frames, centroid = self.center(history, mask)
        velocity = frame_velocities(frames)  # (B, H, N, 3)
        speeds = velocity.norm(dim=-1).transpose(1, 2) / self.displacement_scale[0]  # (B, N, H)
        node = (self.atom_type(z) + self.speed(speeds)).reshape(B * N, -1)
        graph = self.radius_graph(frames[:, -1], mask, box)
        incoming = frames.new_zeros(B * N).index_add_(0, graph.edge_index[1], graph.envelope)
        edges = Edges(graph.edge_index, graph.rbf, graph.envelope, (1.0 + incoming)[:, None, None], graph.image)
        return GraphInputs(frames, centroid, velocity, node, edges)
