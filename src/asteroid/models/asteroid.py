"""ASTEROID: local-global spatial attention, temporal encoder-decoder, STI transformation."""

import torch
from torch import Tensor, nn

from asteroid.errors import ConfigError, DataError
from asteroid.models.base import ForecastModel
from asteroid.models.sti import (
    ConjugateHead,
    STIHead,
    antidiagonal_mean,
    conjugate_loss,
    consistency_loss,
    primary_loss,
)
from asteroid.models.temporal import AutoregressiveDecoder, TemporalEncoder, frame_velocities


class Asteroid(ForecastModel):
    """The ASTEROID forecaster (DESIGN.md section 3).

    Translation invariant (only centred positions, velocities and distances enter) and permutation
    equivariant in atoms (no atom index features). "losses" holds the UNWEIGHTED STI terms
    "sti_primary", "sti_consistency" and "sti_conjugate" when a target is given; empty without one or when
    sti=False.

    latent_tokens: None (default) makes global attention dense over all atoms, O(N^2) per frame, right for
    molecules; a number M routes it through M learned latent tokens, O(N M), for large systems (proteins).
    """

    def __init__(
        self,
        history: int,
        horizon: int,
        hidden: int = 64,
        heads: int = 4,
        encoder_layers: int = 2,
        decoder_layers: int = 1,
        cutoff: float = 5.0,
        num_rbf: int = 16,
        local_attention: bool = True,
        global_attention: bool = True,
        autoregressive: bool = True,
        sti: bool = True,
        sti_delay: int | None = None,
        max_z: int = 100,
        latent_tokens: int | None = None,
    ):
        super().__init__(history, horizon)
        if not (local_attention or global_attention):
            raise ConfigError("model: local_attention and global_attention are both off; enable at least one")
        if hidden % heads:
            raise ConfigError(f"model: hidden={hidden} is not divisible by heads={heads}")
        if encoder_layers < 1 or decoder_layers < 1:
            raise ConfigError(
                f"model: encoder_layers={encoder_layers} and decoder_layers={decoder_layers} must both be >= 1"
            )
        if cutoff <= 0:
            raise ConfigError(f"model: cutoff={cutoff} Angstrom must be positive")
        if latent_tokens is not None and latent_tokens < 1:
            raise ConfigError(f"model: latent_tokens={latent_tokens} must be >= 1 (or null for dense attention)")
        sti_delay = horizon + 1 if sti_delay is None else sti_delay
        if sti and sti_delay < horizon + 1:
            # Shorter delay vectors leave the last future times on no anti-diagonal.
            raise ConfigError(f"model: sti_delay={sti_delay} must be >= horizon + 1 = {horizon + 1}")
        self.max_z = max_z
        self.encoder = TemporalEncoder(
            history, hidden, heads, encoder_layers, num_rbf, cutoff, local_attention, global_attention, max_z,
            latent_tokens,
        )
        self.decoder = AutoregressiveDecoder(
            horizon,
            hidden,
            heads,
            decoder_layers,
            num_rbf,
            cutoff,
            local_attention,
            global_attention,
            max_z,
            autoregressive,
            latent_tokens,
        )
        self.sti_head = STIHead(hidden, sti_delay) if sti else None
        self.conjugate_head = ConjugateHead(hidden, sti_delay) if sti else None
        self.seed_embedding = nn.Linear(3, hidden) if sti else None

    def forward(
        self, history: Tensor, z: Tensor, mask: Tensor, target: Tensor | None = None, sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> dict:
        """history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), target (B, P, N, 3) or None, box (B, 3, 3) or None
        -> {"pred": (B, P, N, 3) Angstrom, "losses": unweighted STI losses}."""
        B, H, N, _ = history.shape
        if H != self.history:
            raise ValueError(f"model expects {self.history} history frames, got {H}")
        if target is not None and target.shape != (B, self.horizon, N, 3):
            raise ValueError(f"target must have shape {(B, self.horizon, N, 3)}, got {tuple(target.shape)}")
        if int(z.max()) > self.max_z:
            raise DataError(f"model: atomic number {int(z.max())} exceeds max_z={self.max_z}")
        frames, centroid = self.center(history, mask)  # (B, H, N, 3), (B, 1, 1, 3)
        memory = self.encoder(z, frames, mask, self.displacement_scale, box)  # (B, H, N, C)
        target_frames = None if target is None else target.masked_fill(~mask[:, None, :, None], 0.0) - centroid

        losses = {}
        query_seed = None
        if self.sti_head is not None:
            delays = self.sti_head(memory)  # (B, H, N, L, 3)
            forecast = antidiagonal_mean(delays)[:, H : H + self.horizon]  # (B, P, N, 3)
            query_seed = self.seed_embedding(forecast)  # (B, P, N, C)
            if target_frames is not None:  # the losses are training terms: a forecast needs only the seed
                # STI units: displacement from the last history frame over the largest step scale.
                sti_unit = self.displacement_scale.max()
                history_units = (frames - frames[:, -1:]) / sti_unit  # (B, H, N, 3)
                losses["sti_consistency"] = consistency_loss(delays, mask)
                losses["sti_conjugate"] = conjugate_loss(self.conjugate_head(delays), history_units, mask)
                target_units = (target_frames - frames[:, -1:]) / sti_unit
                known_units = torch.cat([history_units, target_units], dim=1)  # (B, H+P, N, 3)
                losses["sti_primary"] = primary_loss(delays, known_units, mask)

        output = self.decoder(
            memory,
            z,
            mask,
            frames[:, -1],
            frame_velocities(frames)[:, -1],
            self.displacement_scale,
            query_seed,
            target_frames,
            sampling_prob,
            box,
        )  # (B, P, N, 3)
        # From the centred frames, whose padded atoms are zeroed, so padding never yields NaN.
        return {"pred": self.displace(frames + centroid, output), "losses": losses}
