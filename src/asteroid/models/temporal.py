"""Temporal encoder over the history frames and the decoder that produces the horizon frames."""

import torch
from torch import Tensor, nn

from asteroid.models.base import scheduled_frame
from asteroid.models.spatial import LocalGraph, MultiHeadAttention, RadiusGraph, SpatialBlock


def frame_velocities(frames: Tensor) -> Tensor:
    """Backward frame differences (B, T, N, 3); the first frame reuses the second's (zeros if T == 1)."""
    if frames.shape[1] == 1:
        return torch.zeros_like(frames)
    step = frames[:, 1:] - frames[:, :-1]
    return torch.cat([step[:, :1], step], dim=1)


def atoms_to_sequences(x: Tensor) -> Tensor:
    """(B, T, N, C) -> (B*N, T, C): one time sequence per atom."""
    B, T, N, C = x.shape
    return x.transpose(1, 2).reshape(B * N, T, C)


def sequences_to_atoms(x: Tensor, batch: int) -> Tensor:
    """(B*N, T, C) -> (B, T, N, C), inverse of atoms_to_sequences."""
    BN, T, C = x.shape
    return x.view(batch, BN // batch, T, C).transpose(1, 2)


class FrameEmbedding(nn.Module):
    """Per-atom token of a frame: atom type embedding + linear map of its kinematics.

    Kinematics: centred position in units of the cutoff (O(1) for molecules), velocity (frame difference) in
    units of the one-step displacement scale, and offset from the last history frame in units of the largest
    step scale, so that the small motions being forecast are not buried in the O(1) positions.

    In a periodic cell the position is left out (zero): an atom moved by a cell vector is the same system, so only
    its motion enters the token, and space enters through the radius graph, which sees the periodic images.
    """

    def __init__(self, dim: int, max_z: int, position_unit: float):
        super().__init__()
        self.position_unit = position_unit
        self.atom_type = nn.Embedding(max_z + 1, dim)
        self.kinematics = nn.Linear(9, dim)

    def forward(
        self, z: Tensor, positions: Tensor, velocities: Tensor, offsets: Tensor, displacement_scale: Tensor,
        periodic: bool = False,
    ) -> Tensor:
        """z (B, N); positions, velocities, offsets (B, T, N, 3) Angstrom; displacement_scale (P,) -> (B, T, N, C)."""
        kinematics = torch.cat(
            [
                torch.zeros_like(positions) if periodic else positions / self.position_unit,
                velocities / displacement_scale[0],
                offsets / displacement_scale.max(),
            ],
            dim=-1,
        )
        return self.atom_type(z)[:, None] + self.kinematics(kinematics)


def _spatial(block: SpatialBlock, x: Tensor, mask: Tensor, graph: LocalGraph | None) -> Tensor:
    """Apply a SpatialBlock to every frame of (B, T, N, C); mask is (B*T, N)."""
    B, T, N, C = x.shape
    return block(x.reshape(B * T, N, C), mask, graph).view(B, T, N, C)


def _frame_mask(mask: Tensor, frames: int) -> Tensor:
    """(B, N) -> (B*frames, N) in the b-major frame order of x.reshape(B * frames, N, C)."""
    return mask.repeat_interleave(frames, dim=0)


def _frame_boxes(box: Tensor | None, frames: int) -> Tensor | None:
    """(B, 3, 3) -> (B*frames, 3, 3) in the same order; None stays None (open boundaries)."""
    return None if box is None else box.repeat_interleave(frames, dim=0)


class EncoderLayer(nn.Module):
    """Spatial block within each frame, then each atom attends across the history frames."""

    def __init__(self, dim: int, heads: int, num_rbf: int, local: bool, global_: bool,
                 latent_tokens: int | None = None):
        super().__init__()
        self.spatial = SpatialBlock(dim, heads, num_rbf, local, global_, latent_tokens)
        self.temporal = MultiHeadAttention(dim, heads)
        self.temporal_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, frame_mask: Tensor, graph: LocalGraph | None) -> Tensor:
        """x (B, H, N, C), frame_mask (B*H, N) -> (B, H, N, C)."""
        x = _spatial(self.spatial, x, frame_mask, graph)
        sequences = atoms_to_sequences(x)  # (B*N, H, C)
        sequences = self.temporal_norm(sequences + self.temporal(sequences, sequences))
        return sequences_to_atoms(sequences, x.shape[0])


class TemporalEncoder(nn.Module):
    """Encodes the H history frames into a memory (B, H, N, C) of per-atom, per-frame states."""

    def __init__(
        self,
        history: int,
        dim: int,
        heads: int,
        layers: int,
        num_rbf: int,
        cutoff: float,
        local: bool,
        global_: bool,
        max_z: int,
        latent_tokens: int | None = None,
    ):
        super().__init__()
        self.frame_embedding = FrameEmbedding(dim, max_z, position_unit=cutoff)
        self.time_embedding = nn.Embedding(history, dim)
        self.graph = RadiusGraph(cutoff, num_rbf) if local else None
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, num_rbf, local, global_, latent_tokens) for _ in range(layers)
        )

    def forward(self, z: Tensor, frames: Tensor, mask: Tensor, displacement_scale: Tensor,
                box: Tensor | None = None) -> Tensor:
        """z (B, N), frames (B, H, N, 3) centred Angstrom, mask (B, N), displacement_scale (P,), box (B, 3, 3)
        periodic cell or None -> memory (B, H, N, C)."""
        B, H, N, _ = frames.shape
        offsets = frames - frames[:, -1:]
        x = self.frame_embedding(z, frames, frame_velocities(frames), offsets, displacement_scale, box is not None)
        x = x + self.time_embedding.weight[None, :, None, :]
        frame_mask = _frame_mask(mask, H)
        graph = None if self.graph is None else self.graph(frames.reshape(B * H, N, 3), frame_mask,
                                                           _frame_boxes(box, H))
        for layer in self.layers:
            x = layer(x, frame_mask, graph)
        return x


class DecoderLayer(nn.Module):
    """Self-attention over decoder steps, cross-attention to the atom's memory, spatial block on the frame."""

    def __init__(self, dim: int, heads: int, num_rbf: int, local: bool, global_: bool,
                 latent_tokens: int | None = None):
        super().__init__()
        self.self_attention = MultiHeadAttention(dim, heads)
        self.self_norm = nn.LayerNorm(dim)
        self.cross_attention = MultiHeadAttention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim)
        self.spatial = SpatialBlock(dim, heads, num_rbf, local, global_, latent_tokens)

    def forward(
        self,
        x: Tensor,
        memory_kv: Tensor,
        frame_mask: Tensor,
        graph: LocalGraph | None,
        past: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x (B, S, N, C) new steps; memory_kv (2, B*N, h, H, d) keys/values of the encoder memory per atom;
        frame_mask (B*S, N); past (2, B*N, h, Sp, d) keys/values of earlier steps or None.
        Each new step sees the earlier steps and every new step (one new step when decoding sequentially).
        Returns (B, S, N, C) and the keys/values of all steps seen, the cache for the next step."""
        sequences = atoms_to_sequences(x)  # (B*N, S, C)
        visible = self.self_attention.keys_values(sequences)
        if past is not None:
            visible = torch.cat([past, visible], dim=3)
        sequences = self.self_norm(sequences + self.self_attention.attend(sequences, visible))
        sequences = self.cross_norm(sequences + self.cross_attention.attend(sequences, memory_kv))
        x = _spatial(self.spatial, sequences_to_atoms(sequences, x.shape[0]), frame_mask, graph)
        return x, visible


class AutoregressiveDecoder(nn.Module):
    """Produces the P horizon steps as displacements from the last history frame, in displacement-scale units.

    Autoregressive: step k embeds its input frame (frame H+k-1: the last history frame for k = 0, then the
    true previous frame under teacher forcing, or the model's own detached previous prediction with
    probability sampling_prob, and always at inference), attends to steps <= k, cross-attends to the memory
    of the same atom and runs the spatial block on that input frame. Direct (autoregressive=False): all P
    steps at once from the last history frame, no frame feedback.
    """

    def __init__(
        self,
        horizon: int,
        dim: int,
        heads: int,
        layers: int,
        num_rbf: int,
        cutoff: float,
        local: bool,
        global_: bool,
        max_z: int,
        autoregressive: bool = True,
        latent_tokens: int | None = None,
    ):
        super().__init__()
        self.horizon = horizon
        self.autoregressive = autoregressive
        self.frame_embedding = FrameEmbedding(dim, max_z, position_unit=cutoff)
        self.step_embedding = nn.Embedding(horizon, dim)
        self.graph = RadiusGraph(cutoff, num_rbf) if local else None
        self.layers = nn.ModuleList(
            DecoderLayer(dim, heads, num_rbf, local, global_, latent_tokens) for _ in range(layers)
        )
        self.displacement_head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 3))

    def forward(
        self,
        memory: Tensor,
        z: Tensor,
        mask: Tensor,
        last_frame: Tensor,
        last_velocity: Tensor,
        displacement_scale: Tensor,
        query_seed: Tensor | None = None,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> Tensor:
        """memory (B, H, N, C); z (B, N); mask (B, N); last_frame, last_velocity (B, N, 3) centred Angstrom;
        displacement_scale (P,); query_seed (B, P, N, C) added to the step queries; target (B, P, N, 3)
        centred like last_frame; box (B, 3, 3) periodic cell or None -> displacement outputs (B, P, N, 3)."""
        # Each layer projects the memory to keys/values once, not once per step.
        memory_kv = [layer.cross_attention.keys_values(atoms_to_sequences(memory)) for layer in self.layers]
        if not self.autoregressive:
            return self._decode_direct(memory_kv, z, mask, last_frame, last_velocity, displacement_scale, query_seed,
                                       box)
        frame, velocity = last_frame, last_velocity
        past = [None] * len(self.layers)  # per layer: keys/values of the steps decoded so far
        outputs = []
        for k in range(self.horizon):
            offset = frame - last_frame
            x = self.frame_embedding(z, frame[:, None], velocity[:, None], offset[:, None], displacement_scale,
                                     box is not None)
            x = x + self.step_embedding.weight[k]
            if query_seed is not None:
                x = x + query_seed[:, k : k + 1]
            graph = None if self.graph is None else self.graph(frame, mask, box)
            for i, layer in enumerate(self.layers):
                x, past[i] = layer(x, memory_kv[i], mask, graph, past[i])
            output = self.displacement_head(x[:, 0])  # (B, N, 3)
            outputs.append(output)
            if k + 1 < self.horizon:
                next_frame = last_frame + displacement_scale[k] * output.detach()
                if target is not None:
                    next_frame = scheduled_frame(target[:, k], next_frame, sampling_prob)
                frame, velocity = next_frame, next_frame - frame
        return torch.stack(outputs, dim=1)

    def _decode_direct(
        self,
        memory_kv: list[Tensor],
        z: Tensor,
        mask: Tensor,
        last_frame: Tensor,
        last_velocity: Tensor,
        displacement_scale: Tensor,
        query_seed: Tensor | None,
        box: Tensor | None,
    ) -> Tensor:
        """All P steps in one pass; every step sees the last history frame and every other step."""
        B, N, _ = last_frame.shape
        P = self.horizon
        frame, velocity = last_frame[:, None], last_velocity[:, None]
        x = self.frame_embedding(z, frame, velocity, torch.zeros_like(frame), displacement_scale, box is not None)
        x = x + self.step_embedding.weight[None, :, None, :]  # (B, P, N, C)
        if query_seed is not None:
            x = x + query_seed
        frame_mask = _frame_mask(mask, P)
        frames = last_frame[:, None].expand(B, P, N, 3).reshape(B * P, N, 3)
        graph = None if self.graph is None else self.graph(frames, frame_mask, _frame_boxes(box, P))
        for layer, layer_memory in zip(self.layers, memory_kv):
            x, _ = layer(x, layer_memory, frame_mask, graph)
        return self.displacement_head(x)
