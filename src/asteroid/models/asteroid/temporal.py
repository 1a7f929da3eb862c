"""The temporal side of ASTEROID: history tokens, the encoder over them, and the two decoders.

Every atom has one token per history frame. Its scalars are the atom type, the frame's place in time and the
invariants of its motion (speed, distance from the present, their angle); its vectors are its velocity and its
offset from the present frame. Nothing else enters, so the model is E(3)-equivariant by construction.
Layouts: tokens are per-atom sequences, s (B*N, T, C) and v (B*N, T, 3, Cv).
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from asteroid.models.asteroid.layers import EquivariantAttention, EquivariantFeedForward, attention, vector_linear
from asteroid.models.asteroid.spatial import SpatialBlock
from asteroid.models.base import scheduled_frame
from asteroid.models.frames import atoms_to_sequences
from asteroid.models.neighbors import DenseGraph, LocalGraph, RadiusGraph

# Up to this many atoms per frame in open space, local attention runs over the dense (B, N, N) pairs: the same
# result as over an edge list, without the gathers, scatters and pair search (ethanol, batch 256: 12.2 against 18.6
# ms a layer, and the edge list's pair search 3.4 ms more). Its memory grows as N^2, so large systems keep the edge
# list.
DENSE_LOCAL_MAX_ATOMS = 32


class Geometry(NamedTuple):
    """What the spatial blocks need of one frame per window."""

    mask: Tensor  # (B, N)
    graph: LocalGraph | DenseGraph | None  # radius graph over the B*N atoms (None when local attention is off)
    relative: Tensor | None  # from each target atom to its source's image, in cutoff units: (E, 3), or (B, N, N, 3)
    positions: Tensor | None  # (B, N, 3) centred, in cutoff units; None in a periodic cell


def frame_geometry(frame: Tensor, mask: Tensor, radius_graph: RadiusGraph | None, box: Tensor | None) -> Geometry:
    """frame (B, N, 3) centred Angstrom, mask (B, N), box (B, 3, 3) or None -> Geometry."""
    B, N, _ = frame.shape
    cutoff = radius_graph.cutoff if radius_graph is not None else 1.0
    graph = relative = None
    if radius_graph is not None and box is None and N <= DENSE_LOCAL_MAX_ATOMS:
        graph = radius_graph.dense(frame, mask)
        relative = (frame[:, None] - frame[:, :, None]) / cutoff  # (B, N_target, N_source, 3)
    elif radius_graph is not None:
        graph = radius_graph(frame, mask, box)
        flat = frame.reshape(B * N, 3)
        source, target = graph.edge_index
        relative = (flat.index_select(0, source) + graph.image - flat.index_select(0, target)) / cutoff
    return Geometry(mask, graph, relative, None if box is not None else frame / cutoff)


class MotionEmbedding(nn.Module):
    """Token of an atom at one frame from its velocity u and offset o from the present (both vectors, in
    displacement-scale units): scalars = atom type + time + linear map of (|u|^2, |o|^2, u.o, u.u_present), vectors =
    channel mix of (u, o)."""

    def __init__(self, dim: int, vector_dim: int, max_z: int, times: int):
        super().__init__()
        self.atom_type = nn.Embedding(max_z + 1, dim)
        self.time = nn.Parameter(torch.zeros(times, dim))
        self.invariants = nn.Linear(4, dim)
        self.vectors = vector_linear(2, vector_dim)

    def forward(
        self, z: Tensor, velocity: Tensor, offset: Tensor, present_velocity: Tensor, times: slice
    ) -> tuple[Tensor, Tensor]:
        """z (B, N); velocity, offset (B, T, N, 3) in units; present_velocity (B, 1, N, 3); times: which rows of
        the time table -> s (B*N, T, C), v (B*N, T, 3, Cv)."""
        invariants = torch.stack(
            [
                velocity.square().sum(-1),
                offset.square().sum(-1),
                (velocity * offset).sum(-1),
                (velocity * present_velocity).sum(-1),
            ],
            dim=-1,
        )  # (B, T, N, 4)
        s = self.atom_type(z)[:, None] + self.time[times, None] + self.invariants(invariants)  # (B, T, N, C)
        v = self.vectors(torch.stack([velocity, offset], dim=-1))  # (B, T, N, 3, Cv)
        return atoms_to_sequences(s), atoms_to_sequences(v)


class Memory(NamedTuple):
    """What the encoder hands the decoders and the STI head."""

    s: Tensor  # (B*N, H, Ct) history tokens' scalars, the present frame's spatial state broadcast into them
    v: Tensor  # (B*N, H, 3, Cv) their vectors, likewise
    present_s: Tensor  # (B*N, C) the atom's state after the spatial blocks
    present_v: Tensor  # (B*N, 3, Cv)


class TemporalEncoder(nn.Module):
    """History tokens -> Memory: ``temporal_layers`` rounds of each atom's self-attention across its history
    frames (invariant weights, vector values: a velocity seen three frames ago can move the present), then
    ``spatial_layers`` spatial blocks among the atoms of the present frame on the present token (whose vectors also
    receive a learned filter of the whole history), whose result is broadcast back into every history token.

    The history tokens are narrower (temporal_dim) than the atoms' spatial state (dim): there are H of them per atom
    and they describe one atom's motion at one frame, while the spatial state carries its whole environment.
    """

    def __init__(
        self,
        history: int,
        dim: int,
        temporal_dim: int,
        vector_dim: int,
        heads: int,
        temporal_layers: int,
        spatial_layers: int,
        num_rbf: int,
        local: bool,
        global_: bool,
        max_z: int,
        latent_tokens: int | None,
    ):
        super().__init__()
        self.embedding = MotionEmbedding(temporal_dim, vector_dim, max_z, history)
        self.temporal = nn.ModuleList(
            EquivariantAttention(temporal_dim, vector_dim, heads) for _ in range(temporal_layers)
        )
        self.temporal_norms = nn.ModuleList(nn.LayerNorm(temporal_dim) for _ in range(temporal_layers))
        self.temporal_feed_forward = nn.ModuleList(
            EquivariantFeedForward(temporal_dim, vector_dim) for _ in range(temporal_layers)
        )
        self.lift = nn.Linear(temporal_dim, dim)
        self.history_vectors = vector_linear(2 * history, vector_dim)
        self.spatial = nn.ModuleList(
            SpatialBlock(dim, vector_dim, heads, num_rbf, local, global_, latent_tokens) for _ in range(spatial_layers)
        )
        self.broadcast = nn.Linear(dim, temporal_dim)
        self.vector_broadcast = vector_linear(vector_dim, vector_dim)

    def forward(self, z: Tensor, velocity: Tensor, offset: Tensor, geometry: Geometry) -> Memory:
        """z (B, N); velocity, offset (B, H, N, 3) in units; geometry of the present frame -> Memory."""
        B, H, N, _ = velocity.shape
        s, v = self.embedding(z, velocity, offset, velocity[:, -1:], slice(0, H))  # (B*N, H, Ct), (B*N, H, 3, Cv)
        for temporal, norm, feed_forward in zip(self.temporal, self.temporal_norms, self.temporal_feed_forward):
            update_s, update_v = temporal(s, v)
            s, v = feed_forward(norm(s + update_s), v + update_v)
        # Every history velocity and offset also reaches the present vectors straight, by a learned filter over
        # time: a linear predictor that the attention and the invariant gates downstream adapt per atom.
        motion = torch.cat([velocity, offset], dim=1).permute(0, 2, 3, 1)  # (B, N, 3, 2H)
        present_s = self.lift(s[:, -1]).view(B, N, -1)
        present_v = v[:, -1].view(B, N, 3, -1) + self.history_vectors(motion)
        for block in self.spatial:
            present_s, present_v = block(
                present_s, present_v, geometry.mask, geometry.graph, geometry.relative, geometry.positions
            )
        present_s, present_v = present_s.view(B * N, -1), present_v.view(B * N, 3, -1)
        s = s + self.broadcast(present_s)[:, None]
        v = v + self.vector_broadcast(present_v)[:, None]
        return Memory(s, v, present_s, present_v)


class DirectDecoder(nn.Module):
    """All P steps of a forecast at once, from each atom's memory alone (no spatial pass: the encoder's spatial
    blocks already mixed the atoms): step k queries the atom's history tokens with the present state plus a
    learned step query, and its displacement is an invariant-weighted sum of the present vectors, the attended
    history vectors and the STI seed. Cheap: every per-step term is a small per-atom product."""

    def __init__(self, horizon: int, dim: int, temporal_dim: int, vector_dim: int, heads: int):
        super().__init__()
        self.horizon = horizon
        self.heads = heads
        self.step_query = nn.Parameter(torch.zeros(horizon, temporal_dim))
        self.query = nn.Linear(dim, temporal_dim)
        self.key = nn.Linear(temporal_dim, temporal_dim)
        self.readout = nn.Linear(dim, horizon * (2 * vector_dim + 1))

    def forward(self, memory: Memory, seed: Tensor | None) -> Tensor:
        """memory with X = B*N atoms; seed (X, P, 3) or None -> displacements (X, P, 3)."""
        X, H, temporal_dim = memory.s.shape
        vector_dim = memory.v.shape[-1]
        present_s, present_v = memory.present_s, memory.present_v  # (X, C), (X, 3, Cv)
        query = (self.query(present_s)[:, None] + self.step_query).view(X, self.horizon, self.heads, -1)
        key = self.key(memory.s).view(X, H, self.heads, -1)
        values = memory.v.view(X, H, 3, self.heads, -1).permute(0, 3, 1, 2, 4).flatten(3)  # (X, h, H, 3 dv)
        attended = attention(query.transpose(1, 2), key.transpose(1, 2), values)  # (X, h, P, 3 dv)
        attended = attended.view(X, self.heads, self.horizon, 3, -1).permute(0, 2, 3, 1, 4).flatten(3)  # (X, P, 3, Cv)
        gates = self.readout(present_s).view(X, self.horizon, 2 * vector_dim + 1)
        present_gate, attended_gate, seed_gate = gates.split([vector_dim, vector_dim, 1], dim=-1)
        out = torch.einsum("xpc,xdc->xpd", present_gate, present_v) + (attended_gate[:, :, None] * attended).sum(-1)
        return out if seed is None else out + seed_gate * seed


class StepwiseDecoder(nn.Module):
    """The horizon one step at a time, each step fed the frame before it (the last history frame, then under
    teacher forcing the true previous frame, or with probability sampling_prob the model's own detached
    prediction, always at inference): step k's token is the atom's present state plus the embedded motion of that
    frame; it attends to the atom's history tokens and to the steps before it, then runs one spatial block on that
    frame's geometry; its displacement is an invariant-weighted sum of its vectors and the STI seed. P spatial
    passes per forecast instead of none: the costlier of the two decoders."""

    def __init__(
        self,
        horizon: int,
        dim: int,
        temporal_dim: int,
        vector_dim: int,
        heads: int,
        num_rbf: int,
        local: bool,
        global_: bool,
        max_z: int,
        latent_tokens: int | None,
    ):
        super().__init__()
        self.horizon = horizon
        self.embedding = MotionEmbedding(dim, vector_dim, max_z, horizon)
        self.memory_lift = nn.Linear(temporal_dim, dim)
        self.attention = EquivariantAttention(dim, vector_dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.spatial = SpatialBlock(dim, vector_dim, heads, num_rbf, local, global_, latent_tokens)
        self.readout = nn.Linear(dim, vector_dim + 1)

    def forward(
        self,
        memory: Memory,
        z: Tensor,
        mask: Tensor,
        last_frame: Tensor,
        last_velocity: Tensor,
        scale: Tensor,
        seed: Tensor | None,
        radius_graph: RadiusGraph | None,
        box: Tensor | None,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
    ) -> Tensor:
        """memory as the encoder returns it; last_frame, last_velocity (B, N, 3) centred Angstrom; scale (P,)
        displacement scale; seed (B*N, P, 3) or None; target (B, P, N, 3) centred like last_frame
        -> displacements (B*N, P, 3) in units of scale."""
        B, N, _ = last_frame.shape
        context = self.attention.keys_values(self.memory_lift(memory.s), memory.v)  # grows by one step at a time
        frame, velocity = last_frame, last_velocity
        outputs = []
        for k in range(self.horizon):
            offset = (frame - last_frame) / scale.max()
            s, v = self.embedding(
                z, (velocity / scale[0])[:, None], offset[:, None], (last_velocity / scale[0])[:, None], slice(k, k + 1)
            )
            s, v = s + memory.present_s[:, None], v + memory.present_v[:, None]  # (B*N, 1, C), (B*N, 1, 3, Cv)
            step_context = self.attention.keys_values(s, v)
            context = tuple(torch.cat([past, new], dim=2) for past, new in zip(context, step_context))
            update_s, update_v = self.attention.attend(s, context)
            s, v = self.norm(s + update_s).view(B, N, -1), (v + update_v).view(B, N, 3, -1)
            geometry = frame_geometry(frame, mask, radius_graph, box)
            s, v = self.spatial(s, v, mask, geometry.graph, geometry.relative, geometry.positions)
            gates = self.readout(s)  # (B, N, Cv + 1)
            output = torch.einsum("bnc,bndc->bnd", gates[..., :-1], v)  # (B, N, 3)
            if seed is not None:
                output = output + gates[..., -1:] * seed[:, k].view(B, N, 3)
            outputs.append(output)
            if k + 1 < self.horizon:
                next_frame = last_frame + scale[k] * output.detach()
                if target is not None:
                    next_frame = scheduled_frame(target[:, k], next_frame, sampling_prob)
                frame, velocity = next_frame, next_frame - frame
        return atoms_to_sequences(torch.stack(outputs, dim=1))
