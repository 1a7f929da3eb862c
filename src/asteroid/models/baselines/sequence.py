"""Sequence-model baselines: each frame flattened to one 3N vector, no spatial structure (docs/design.md, section 4)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asteroid.errors import ConfigError
from asteroid.models.base import Forecast, ForecastModel, scheduled_frame
from asteroid.models.frames import frame_velocities

POSITION_UNIT = 5.0  # Angstrom: centred coordinates of small molecules are a few units of this


class FlattenedSeriesForecaster(ForecastModel):
    """The "high-dimensional time series" view: frame t is one vector of 6 * n_atoms features.

    Features of a frame: its coordinates centred on the last history frame's centroid (in POSITION_UNIT) and its
    velocity, the difference to the previous frame (in displacement_scale[0] units). Padding atoms are zero and the
    batch is zero-padded to `n_atoms`, the atom count the net was built for. Decoder step k is fed frame H+k-1:
    the last history frame, then the true previous frame under teacher forcing or, with probability sampling_prob
    per window (and always at inference), the model's own detached previous prediction; it outputs the displacement
    of every atom from the last history frame in displacement_scale[k] units. Without dropout, training with
    sampling_prob=1 gives exactly the inference forecast.

    Translation invariant (centred inputs, displacement outputs) but neither rotation nor permutation equivariant:
    atom i is always input slot i, as in the time-series literature. Its Forecast has no losses. Subclasses
    implement `encode` and `step`.
    """

    def __init__(self, history: int, horizon: int, n_atoms: int):
        super().__init__(history, horizon)
        if n_atoms < 1:
            raise ConfigError(f"model: n_atoms={n_atoms} must be >= 1 (the padded atom count of the data)")
        self.n_atoms = n_atoms
        self.feature_dim = 6 * n_atoms

    def encode(self, sequence: Tensor):
        """sequence (B, H, feature_dim) -> decoder state."""
        raise NotImplementedError

    def step(self, state, frame_features: Tensor, k: int) -> tuple[Tensor, object]:
        """Decoder step k: state, features of frame H+k-1 (B, feature_dim) -> (output (B, 3 * n_atoms), state)."""
        raise NotImplementedError

    def frame_features(self, frames: Tensor, velocities: Tensor) -> Tensor:
        """frames, velocities (..., n_atoms, 3) centred Angstrom -> (..., feature_dim)."""
        positions = frames / POSITION_UNIT
        steps = velocities / self.displacement_scale[0]
        return torch.cat([positions, steps], dim=-1).flatten(-2)

    def forward(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> Forecast:
        """history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), target (B, P, N, 3) or None
        -> Forecast: pred (B, P, N, 3) Angstrom, no losses.

        The box, if any, is not used: the flattened series has no notion of neighbours or of periodic images."""
        B, H, N, _ = history.shape
        self.check_inputs(history, z, target)
        if N > self.n_atoms:
            raise ConfigError(
                f"model: the batch has {N} atoms but {type(self).__name__} was built for "
                f"n_atoms={self.n_atoms}; set model.net.init_args.n_atoms to the largest molecule"
            )
        frames, centroid = self.center(history, mask)  # (B, H, N, 3), (B, 1, 1, 3)
        # Padding at zero rather than at -centroid, so that it carries no information about the real atoms.
        atom_mask = mask[:, None, :, None]  # (B, 1, N, 1)
        frames = frames.masked_fill(~atom_mask, 0.0)
        pad = (0, 0, 0, self.n_atoms - N)
        padded = F.pad(frames, pad)  # (B, H, n_atoms, 3)
        truth = None if target is None else F.pad((target - centroid).masked_fill(~atom_mask, 0.0), pad)
        real = F.pad(mask, (0, self.n_atoms - N))[:, :, None]  # (B, n_atoms, 1)

        velocities = frame_velocities(padded)  # (B, H, n_atoms, 3)
        state = self.encode(self.frame_features(padded, velocities))
        last_frame = padded[:, -1]
        frame, velocity = last_frame, velocities[:, -1]
        outputs = []
        for k in range(self.horizon):
            output, state = self.step(state, self.frame_features(frame, velocity), k)
            output = output.view(B, self.n_atoms, 3).masked_fill(~real, 0.0)
            outputs.append(output)
            if k + 1 < self.horizon:
                next_frame = last_frame + self.displacement_scale[k] * output.detach()
                if truth is not None:
                    next_frame = scheduled_frame(truth[:, k], next_frame, sampling_prob)
                frame, velocity = next_frame, next_frame - frame
        output = torch.stack(outputs, dim=1)[:, :, :N]  # (B, P, N, 3)
        return Forecast(self.displace(frames + centroid, output))


class LSTMForecaster(FlattenedSeriesForecaster):
    """LSTM encoder over the H flattened frames, autoregressive LSTM decoder over the P horizon steps.

    The decoder starts from the encoder's final (h, c) state. See FlattenedSeriesForecaster for inputs and outputs.
    """

    def __init__(self, history: int, horizon: int, n_atoms: int, hidden: int = 256, layers: int = 2):
        super().__init__(history, horizon, n_atoms)
        self.encoder = nn.LSTM(self.feature_dim, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(self.feature_dim, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, 3 * n_atoms)

    def encode(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        _, state = self.encoder(sequence)
        return state

    def step(self, state, frame_features, k):
        y, state = self.decoder(frame_features[:, None], state)  # (B, 1, hidden)
        return self.head(y[:, 0]), state


class TransformerForecaster(FlattenedSeriesForecaster):
    """Transformer encoder-decoder (pre-norm, no dropout) over the flattened frames.

    One token per frame with a learned embedding of the frame's time index (history 0..H-1, decoder step k is fed
    frame H+k-1); the decoder is causal and re-runs on its prefix at each step, so teacher forcing and
    autoregressive decoding share one code path. See FlattenedSeriesForecaster for inputs and outputs.
    """

    def __init__(self, history: int, horizon: int, n_atoms: int, hidden: int = 128, heads: int = 4, layers: int = 2):
        super().__init__(history, horizon, n_atoms)
        if hidden % heads:
            raise ConfigError(f"model: hidden={hidden} is not divisible by heads={heads}")
        self.frame_embedding = nn.Linear(self.feature_dim, hidden)
        self.time_embedding = nn.Embedding(history + horizon - 1, hidden)
        options = dict(
            d_model=hidden, nhead=heads, dim_feedforward=4 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**options), layers, nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**options), layers, nn.LayerNorm(hidden))
        self.head = nn.Linear(hidden, 3 * n_atoms)

    def encode(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.frame_embedding(sequence) + self.time_embedding.weight[: self.history]  # (B, H, hidden)
        memory = self.encoder(tokens)
        return memory, tokens[:, :0]

    def step(self, state, frame_features, k):
        memory, prefix = state  # (B, H, hidden), (B, k, hidden)
        token = self.frame_embedding(frame_features) + self.time_embedding.weight[self.history - 1 + k]
        prefix = torch.cat([prefix, token[:, None]], dim=1)  # (B, k+1, hidden)
        causal = nn.Transformer.generate_square_subsequent_mask(k + 1, device=prefix.device, dtype=prefix.dtype)
        y = self.decoder(prefix, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.head(y[:, -1]), (memory, prefix)
