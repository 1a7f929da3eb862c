"""ASTEROID: local-global spatial attention, a temporal encoder-decoder and the STI transformation, on scalar and
vector channels so that the forecast is exactly E(3)-equivariant (docs/design.md, "The model")."""

import torch
from torch import Tensor

from asteroid.errors import ConfigError
from asteroid.models.asteroid.sti import (
    ConjugateHead,
    STIHead,
    antidiagonal_mean,
    conjugate_loss,
    consistency_loss,
    primary_loss,
)
from asteroid.models.asteroid.temporal import DirectDecoder, StepwiseDecoder, TemporalEncoder, frame_geometry
from asteroid.models.base import Forecast, ForecastModel
from asteroid.models.frames import atoms_to_sequences, frame_velocities, sequences_to_atoms
from asteroid.models.neighbors import RadiusGraph


class Asteroid(ForecastModel):
    """The ASTEROID forecaster.

    Exactly E(3)-equivariant (rotations, reflections, translations: only velocities, offsets from the present frame
    and relative positions enter, as vectors or through their dot products) and permutation equivariant in atoms
    (no atom index features), so it needs no rotation augmentation. With sti=True (off by default, as in the shipped
    config: it did not pay, docs/design.md) its Forecast.losses holds the UNWEIGHTED STI terms "sti_primary",
    "sti_consistency" and "sti_conjugate" when a target is given; otherwise, and without a target, it is empty.

    autoregressive: False (default) decodes all P frames of a forecast at once (autoregression then runs across
    forecasts, in rollout); True decodes them one step at a time, each fed the frame before it, as the paper's
    temporal decoder does, at P spatial passes per forecast.
    latent_tokens: None (default) makes global attention dense over all atoms, O(N^2) per frame, right for
    molecules; a number M routes it through M learned latent tokens, O(N M), for large systems (proteins).
    """

    def __init__(
        self,
        history: int,
        horizon: int,
        hidden: int = 64,
        temporal_hidden: int = 16,
        vector_channels: int = 16,
        heads: int = 4,
        temporal_layers: int = 1,
        spatial_layers: int = 2,
        cutoff: float = 5.0,
        num_rbf: int = 16,
        local_attention: bool = True,
        global_attention: bool = True,
        autoregressive: bool = False,
        sti: bool = False,
        sti_delay: int | None = None,
        max_z: int = 100,
        latent_tokens: int | None = None,
    ):
        super().__init__(history, horizon)
        if not (local_attention or global_attention):
            raise ConfigError("model: local_attention and global_attention are both off; enable at least one")
        if min(hidden, temporal_hidden, vector_channels, heads, num_rbf) < 1:
            raise ConfigError(
                f"model: hidden={hidden}, temporal_hidden={temporal_hidden}, vector_channels="
                f"{vector_channels}, heads={heads} and num_rbf={num_rbf} must all be >= 1"
            )
        if hidden % heads or temporal_hidden % heads or vector_channels % heads:
            raise ConfigError(
                f"model: hidden={hidden}, temporal_hidden={temporal_hidden} and vector_channels="
                f"{vector_channels} must all be divisible by heads={heads}"
            )
        if temporal_layers < 0 or spatial_layers < 1:
            raise ConfigError(
                f"model: temporal_layers={temporal_layers} must be >= 0 and spatial_layers={spatial_layers} >= 1"
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
        self.radius_graph = RadiusGraph(cutoff, num_rbf) if local_attention else None
        self.encoder = TemporalEncoder(
            history,
            hidden,
            temporal_hidden,
            vector_channels,
            heads,
            temporal_layers,
            spatial_layers,
            num_rbf,
            local_attention,
            global_attention,
            max_z,
            latent_tokens,
        )
        if autoregressive:
            self.decoder = StepwiseDecoder(
                horizon,
                hidden,
                temporal_hidden,
                vector_channels,
                heads,
                num_rbf,
                local_attention,
                global_attention,
                max_z,
                latent_tokens,
            )
        else:
            self.decoder = DirectDecoder(horizon, hidden, temporal_hidden, vector_channels, heads)
        self.sti_head = STIHead(temporal_hidden, vector_channels, sti_delay) if sti else None
        self.conjugate_head = ConjugateHead(hidden, sti_delay) if sti else None

    @property
    def autoregressive(self) -> bool:
        return isinstance(self.decoder, StepwiseDecoder)

    def forward(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> Forecast:
        """history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), target (B, P, N, 3) or None, box (B, 3, 3) or None
        -> Forecast: pred (B, P, N, 3) Angstrom, losses the unweighted STI terms."""
        self.check_inputs(history, z, target, self.max_z)
        B, H, N, _ = history.shape
        frames, centroid = self.center(history, mask)  # (B, H, N, 3), (B, 1, 1, 3)
        scale = self.displacement_scale
        velocity = frame_velocities(frames)  # (B, H, N, 3) Angstrom per frame
        sti_unit = scale.max()
        offset = (frames - frames[:, -1:]) / sti_unit  # (B, H, N, 3) STI units
        geometry = frame_geometry(frames[:, -1], mask, self.radius_graph, box)
        memory = self.encoder(z, velocity / scale[0], offset, geometry)

        losses, seed = {}, None
        if self.sti_head is not None:
            delays = self.sti_head(memory.s, memory.v, batch=B)  # (B, H, N, L, 3)
            seed = atoms_to_sequences(antidiagonal_mean(delays)[:, H : H + self.horizon])  # (B*N, P, 3)
            if target is not None:  # the losses are training terms: a forecast needs only the seed
                target_offset = target.masked_fill(~mask[:, None, :, None], 0.0) - centroid - frames[:, -1:]
                known = torch.cat([offset, target_offset / sti_unit], dim=1)  # (B, H+P, N, 3)
                losses["sti_primary"] = primary_loss(delays, known, mask)
                losses["sti_consistency"] = consistency_loss(delays, mask)
                losses["sti_conjugate"] = conjugate_loss(self.conjugate_head(delays), offset, mask)

        if self.autoregressive:
            target_frames = None if target is None else target.masked_fill(~mask[:, None, :, None], 0.0) - centroid
            output = self.decoder(
                memory,
                z,
                mask,
                frames[:, -1],
                velocity[:, -1],
                scale,
                seed,
                self.radius_graph,
                box,
                target_frames,
                sampling_prob,
            )
        else:
            output = self.decoder(memory, seed)
        # From the centred frames, whose padded atoms are zeroed, so padding never yields NaN.
        return Forecast(self.displace(frames + centroid, sequences_to_atoms(output, B)), losses)
