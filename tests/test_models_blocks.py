"""Building blocks of ASTEROID: neighbour graphs, spatial attention, temporal encoder and decoder."""

import numpy as np
import pytest
import torch

from asteroid.models.neighbors import radius_neighbors
from asteroid.models.spatial import GlobalAttention, LocalAttention, RadiusGraph, SpatialBlock
from asteroid.models.temporal import (
    AutoregressiveDecoder,
    TemporalEncoder,
    atoms_to_sequences,
    frame_velocities,
    sequences_to_atoms,
)

C, HEADS, RBF, CUTOFF = 16, 2, 8, 2.0


def brute_force_neighbors(pos: np.ndarray, mask: np.ndarray, cutoff: float) -> dict:
    """{(source node, target node): distance} by explicit loops over frames and atom pairs."""
    M, N, _ = pos.shape
    pairs = {}
    for m in range(M):
        for i in range(N):
            for j in range(N):
                if i != j and mask[m, i] and mask[m, j]:
                    d = np.linalg.norm(pos[m, i] - pos[m, j])
                    if d < cutoff:
                        pairs[(m * N + j, m * N + i)] = d
    return pairs


def test_radius_neighbors_matches_brute_force_with_padding():
    pos = torch.rand(3, 7, 3) * 3.0
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 0] = False
    edge_index, distance, _ = radius_neighbors(pos, mask, cutoff=1.5)
    expected = brute_force_neighbors(pos.numpy(), mask.numpy(), 1.5)
    found = {(int(s), int(t)): float(d) for (s, t), d in zip(edge_index.T, distance)}
    assert set(found) == set(expected)
    assert len(found) == edge_index.shape[1]  # no duplicates
    for pair, d in expected.items():
        assert found[pair] == pytest.approx(d, abs=1e-5)


def test_radius_neighbors_distance_gradient_is_finite():
    pos = torch.rand(2, 4, 3, requires_grad=True)
    distance = radius_neighbors(pos, torch.ones(2, 4, dtype=torch.bool), cutoff=10.0).distance
    distance.sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_radius_graph_features():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.9, 0.0, 0.0], [5.0, 0.0, 0.0]]])
    graph = RadiusGraph(CUTOFF, RBF)(pos, torch.ones(1, 4, dtype=torch.bool))
    E = graph.edge_index.shape[1]
    assert E == 6  # atoms 0, 1, 2 are pairwise within 2 Angstrom, atom 3 is alone
    assert graph.rbf.shape == (E, RBF)
    # Envelope: 0.5 (cos(pi d / cutoff) + 1), so 1 near d = 0 and close to 0 near the cutoff.
    distance = torch.tensor([0.5, 1.9, 1.4])  # pairs (0,1), (0,2), (1,2)
    expected = 0.5 * (torch.cos(distance * torch.pi / CUTOFF) + 1)
    for (a, b), value in zip([(0, 1), (0, 2), (1, 2)], expected):
        edge = ((graph.edge_index[0] == a) & (graph.edge_index[1] == b)).nonzero().item()
        assert graph.envelope[edge] == pytest.approx(float(value), abs=1e-6)


def test_local_attention_sees_only_atoms_within_cutoff():
    attention = LocalAttention(C, HEADS, RBF)
    radius = RadiusGraph(CUTOFF, RBF)
    x = torch.randn(2, 5, C)
    pos = torch.randn(2, 5, 3) * 0.3
    pos[:, 4] = torch.tensor([10.0, 0.0, 0.0])  # far from everything
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = attention(x, radius(pos, mask))
    assert out.shape == (2, 5, C)
    x_moved = x.clone()
    x_moved[:, 4] = torch.randn(2, C)
    out_moved = attention(x_moved, radius(pos, mask))
    torch.testing.assert_close(out_moved[:, :4], out[:, :4])
    # An isolated atom aggregates nothing: only the output bias is left.
    torch.testing.assert_close(out[:, 4], attention.out.bias.expand(2, C))


def test_global_attention_ignores_padding():
    attention = GlobalAttention(C, HEADS)
    x = torch.randn(3, 6, C)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 4:] = False
    out = attention(x, mask)
    assert out.shape == (3, 6, C)
    x_padded = x.clone()
    x_padded[:, 4:] = 100.0 * torch.randn(3, 2, C)
    torch.testing.assert_close(attention(x_padded, mask)[:, :4], out[:, :4])


@pytest.mark.parametrize("local,global_", [(True, True), (True, False), (False, True)])
def test_spatial_block_shapes_and_padding(local, global_):
    block = SpatialBlock(C, HEADS, RBF, local, global_)
    x = torch.randn(4, 6, C)
    pos = torch.randn(4, 6, 3)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 5] = False
    graph = RadiusGraph(CUTOFF, RBF)(pos, mask) if local else None
    out = block(x, mask, graph)
    assert out.shape == (4, 6, C)
    x_padded = x.clone()
    x_padded[:, 5] = torch.randn(4, C)
    torch.testing.assert_close(block(x_padded, mask, graph)[:, :5], out[:, :5])


def test_spatial_block_needs_an_attention():
    with pytest.raises(ValueError, match="local or global"):
        SpatialBlock(C, HEADS, RBF, local=False, global_=False)


def test_sequence_layout_round_trip_and_velocities():
    x = torch.randn(2, 3, 4, 5)  # (B, T, N, C)
    sequences = atoms_to_sequences(x)
    assert sequences.shape == (8, 3, 5)
    torch.testing.assert_close(sequences[1 * 4 + 2], x[1, :, 2])  # window 1, atom 2
    torch.testing.assert_close(sequences_to_atoms(sequences, 2), x)
    frames = torch.tensor([0.0, 1.0, 3.0, 6.0])[None, :, None, None].expand(1, 4, 1, 3)
    velocities = frame_velocities(frames)[0, :, 0, 0]
    torch.testing.assert_close(velocities, torch.tensor([1.0, 1.0, 2.0, 3.0]))
    assert (frame_velocities(frames[:, :1]) == 0).all()


def test_encoder_and_decoder_shapes():
    B, H, P, N = 2, 4, 3, 5
    z = torch.randint(1, 9, (B, N))
    mask = torch.ones(B, N, dtype=torch.bool)
    frames = torch.randn(B, H, N, 3)
    encoder = TemporalEncoder(H, C, HEADS, 2, RBF, CUTOFF, True, True, max_z=10)
    memory = encoder(z, frames, mask, torch.full((P,), 0.1))
    assert memory.shape == (B, H, N, C)
    for autoregressive in (True, False):
        decoder = AutoregressiveDecoder(P, C, HEADS, 2, RBF, CUTOFF, True, True, 10, autoregressive)
        scale = torch.full((P,), 0.1)
        out = decoder(memory, z, mask, frames[:, -1], frames[:, -1] - frames[:, -2], scale)
        assert out.shape == (B, P, N, 3)
        seeded = decoder(memory, z, mask, frames[:, -1], frames[:, -1] - frames[:, -2], scale, torch.randn(B, P, N, C))
        assert not torch.allclose(seeded, out)  # the seed reaches the queries
