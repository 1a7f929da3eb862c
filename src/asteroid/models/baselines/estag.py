"""An equivariant spatio-temporal attentive graph network after ESTAG (Wu et al., NeurIPS 2023)."""

import math

import torch
from torch import Tensor, nn

from asteroid.errors import ConfigError
from asteroid.models.base import Forecast
from asteroid.models.baselines.graph import EGNNLayer, GraphForecaster, MultiStepHead, mlp
from asteroid.models.frames import atoms_to_sequences, sequences_to_atoms


def equivariant_spectrum(nodes: Tensor, edge_index: Tensor, unit: Tensor) -> tuple[Tensor, Tensor]:
    """ESTAG's equivariant discrete Fourier transform of centred coordinates, reduced to invariants.

    nodes (V, H, 3) centred coordinates -> node amplitudes |X_i(k)| (V, K) and edge cross spectra
    Re <X_i(k), X_j(k)> (E, K) for the K = H // 2 non-zero frequencies, in units of `unit` (Angstrom).
    An orthogonal map acts on X_i(k) as on a real vector, so norms and Hermitian products are E(3) invariant;
    dropping k = 0 removes the mean position and keeps only the motion.
    """
    H = nodes.shape[1]
    spectrum = torch.fft.rfft(nodes, dim=1)[:, 1:] / (H * unit)  # (V, K, 3) complex
    amplitude = spectrum.abs().square().sum(dim=-1).sqrt()  # (V, K)
    source, target = edge_index
    cross = (spectrum[target] * spectrum[source].conj()).real.sum(dim=-1)  # (E, K)
    return amplitude, cross


class EquivariantTemporalAttention(nn.Module):
    """Each atom's frame t attends to its frames s <= t with weights a_ts from invariant features:

    h_t <- LayerNorm(h_t + W_o sum_s a_ts W_v h_s),  x_t <- x_t + sum_s a_ts phi(h_s) (x_s - x_t).
    Differences of the same atom's coordinates keep the update translation and rotation equivariant.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query_key_value = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.coordinate_weight = mlp(dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """h (V, T, C), x (V, T, 3) -> updated h, x."""
        T = h.shape[1]
        query, key, value = self.query_key_value(h).chunk(3, dim=-1)
        logits = query @ key.transpose(1, 2) / math.sqrt(h.shape[-1])  # (V, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
        weights = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # (V, T, T)
        coordinate = weights * self.coordinate_weight(h).transpose(1, 2)  # (V, T, T): a_ts phi(h_s)
        x = x + coordinate @ x - coordinate.sum(dim=-1, keepdim=True) * x
        h = self.norm(h + self.out(weights @ value))
        return h, x


class ESTAG(GraphForecaster):
    """Equivariant spatial module (EGNN layer on every history frame) alternating with equivariant temporal
    attention across the H frames of each atom, with the equivariant Fourier features of the history.

    Node features per frame: atom type, history speeds, frame embedding and the EDFT amplitudes; edge features:
    distance RBFs and the EDFT cross spectra. After `layers` spatial + temporal rounds, the forecast is the official
    code's readout (`ESTAG.forward` in GLAD-RUC/ESTAG models/model.py, `tempo=True`), the last frame's latent
    coordinates plus a learned combination of every frame's latent coordinates relative to them,
    x_k = x_H + sum_t theta_kt (x_t - x_H) with theta zero at the start and one row per horizon step, plus the P-step
    equivariant head shared with EGNN on the last frame's messages.
    Why both: with the head alone our model reached 1.6x the official code's test MSE on the official ethanol protocol
    and budget (7.2e-5 against 4.56e-5 A^2), and the official readout brought it to 1.2x (docs/results/faithful);
    with the readout alone it was 14% worse than with both on our 8-step default protocol (ethanol, seed 0,
    3 CPU-minutes: 0.0143 against 0.0126 A^2): one latent trajectory combined linearly extrapolates poorly over
    8 steps.
    Simplified relative to the paper: one radius graph (the last frame's) serves every frame, where the official
    code uses the bond graph and its second neighbours; the EDFT enters only as invariant features (no
    Fourier-domain coordinate update); the attention has one head.
    """

    def __init__(
        self, history: int, horizon: int, hidden: int = 64, layers: int = 2, cutoff: float = 5.0, max_z: int = 100
    ):
        super().__init__(history, horizon, hidden, cutoff, max_z)
        if history < 2:
            raise ConfigError(f"model: ESTAG needs history >= 2 frames for its Fourier features, got {history}")
        if layers < 1:
            raise ConfigError(f"model: layers={layers} must be >= 1")
        frequencies = history // 2
        edge_dim = self.num_rbf + frequencies
        self.frame_embedding = nn.Embedding(history, hidden)
        self.amplitude = nn.Linear(frequencies, hidden)
        self.spatial = nn.ModuleList(EGNNLayer(hidden, edge_dim, cutoff) for _ in range(layers))
        self.temporal = nn.ModuleList(EquivariantTemporalAttention(hidden) for _ in range(layers))
        self.readout = nn.Parameter(torch.zeros(horizon, history))  # theta (P, H): starts as the latent last frame
        self.head = MultiStepHead(hidden, edge_dim, cutoff, horizon)

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
        x = atoms_to_sequences(inputs.frames)  # (V, H, 3)
        velocity = atoms_to_sequences(inputs.velocity)  # (V, H, 3)
        amplitude, cross = equivariant_spectrum(x, inputs.edges.index, unit)
        edges = inputs.edges._replace(attr=torch.cat([inputs.edges.attr, cross], dim=-1))
        node = inputs.node + self.amplitude(amplitude)  # (V, C)
        h = node[:, None] + self.frame_embedding.weight[None]  # (V, H, C)
        for spatial, temporal in zip(self.spatial, self.temporal):
            h, x = spatial(h, x, velocity, edges, unit)
            h, x = temporal(h, x)
        last = x[:, -1:]  # (V, 1, 3) latent coordinates of the last frame
        moved = last + torch.einsum("ph,vhc->vpc", self.readout, x - last)  # (V, P, 3)
        start = atoms_to_sequences(inputs.frames[:, -1:])  # (V, 1, 3) the true last frame
        output = (moved - start) / self.displacement_scale[:, None]  # (V, P, 3) in displacement-scale units
        output = output + self.head(h[:, -1:], x[:, -1:], velocity[:, -1:] / unit, edges)
        pred = self.displace(inputs.frames + inputs.centroid, sequences_to_atoms(output, len(history)))
        return Forecast(pred)
