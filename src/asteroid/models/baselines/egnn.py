"""EGNN baseline (Satorras et al. 2021) with a multi-step head."""

from torch import Tensor, nn

from asteroid.errors import ConfigError
from asteroid.models.base import Forecast
from asteroid.models.baselines.graph import EGNNLayer, GraphForecaster, MultiStepHead
from asteroid.models.frames import atoms_to_sequences, sequences_to_atoms


class EGNN(GraphForecaster):
    """EGNN (Satorras et al. 2021) on the last history frame with a P-step equivariant head.

    Nodes: atom type + speeds |v| of the H history frames; edges: radius graph of the last frame with the squared
    distance and distance RBFs; every layer moves latent coordinates by pairwise differences and the last
    velocity (the N-body variant). The head turns the final messages into P displacements, each a sum of
    difference vectors and the velocity weighted by invariants, in units of that step's displacement scale.
    Simplified relative to the paper: one radius graph (the last frame's) with a smooth cosine envelope on the
    messages and an envelope-sum normaliser, phi_x a single linear map of m_ij, LayerNorm on the node update,
    and a multi-step head that the paper (one-step N-body prediction) does not have.
    """

    def __init__(
        self, history: int, horizon: int, hidden: int = 64, layers: int = 4, cutoff: float = 5.0, max_z: int = 100
    ):
        super().__init__(history, horizon, hidden, cutoff, max_z)
        if layers < 1:
            raise ConfigError(f"model: layers={layers} must be >= 1")
        self.layers = nn.ModuleList(EGNNLayer(hidden, self.num_rbf, cutoff) for _ in range(layers))
        self.head = MultiStepHead(hidden, self.num_rbf, cutoff, horizon)

    def forward(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> Forecast:
        """history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), box (B, 3, 3) or None
        -> Forecast: pred (B, P, N, 3) Angstrom, no losses."""
        inputs = self.prepare(history, z, mask, box)
        unit = self.displacement_scale[0]
        x = atoms_to_sequences(inputs.frames[:, -1:])  # (V, 1, 3)
        velocity = atoms_to_sequences(inputs.velocity[:, -1:])  # (V, 1, 3)
        h = inputs.node[:, None]  # (V, 1, C)
        for layer in self.layers:
            h, x = layer(h, x, velocity, inputs.edges, unit)
        output = self.head(h, x, velocity / unit, inputs.edges)  # (V, P, 3)
        pred = self.displace(inputs.frames + inputs.centroid, sequences_to_atoms(output, len(history)))
        return Forecast(pred)
