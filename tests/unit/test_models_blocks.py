"""Building blocks of ASTEROID: neighbour graphs, scalar-vector attention, spatial blocks, encoder and decoders."""

import numpy as np
import pytest
import torch

from asteroid.models.asteroid import temporal
from asteroid.models.asteroid.layers import EquivariantAttention, EquivariantFeedForward
from asteroid.models.asteroid.spatial import DenseAttention, LocalAttention, SpatialBlock
from asteroid.models.asteroid.temporal import DirectDecoder, StepwiseDecoder, TemporalEncoder, frame_geometry
from asteroid.models.frames import atoms_to_sequences, frame_velocities, sequences_to_atoms
from asteroid.models.neighbors import DenseGraph, RadiusGraph, radius_neighbors

C, CV, HEADS, RBF, CUTOFF = 16, 4, 2, 8, 2.0


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


@pytest.mark.parametrize("dense_max_atoms", [0, 32])  # the edge list, the dense pairs
def test_local_attention_sees_only_atoms_within_cutoff(monkeypatch, dense_max_atoms):
    monkeypatch.setattr(temporal, "DENSE_LOCAL_MAX_ATOMS", dense_max_atoms)
    attention = LocalAttention(C, CV, HEADS, RBF)
    pos = torch.randn(2, 5, 3) * 0.3
    pos[:, 4] = torch.tensor([10.0, 0.0, 0.0])  # far from everything
    mask = torch.ones(2, 5, dtype=torch.bool)
    geometry = frame_geometry(pos, mask, RadiusGraph(CUTOFF, RBF), None)
    s, v = torch.randn(2, 5, C), torch.randn(2, 5, 3, CV)
    out_s, out_v = attention(s, v, geometry.graph, geometry.relative)
    assert out_s.shape == (2, 5, C) and out_v.shape == (2, 5, 3, CV)
    moved_s, moved_v = s.clone(), v.clone()
    moved_s[:, 4], moved_v[:, 4] = torch.randn(2, C), torch.randn(2, 3, CV)
    near_s, near_v = attention(moved_s, moved_v, geometry.graph, geometry.relative)
    torch.testing.assert_close(near_s[:, :4], out_s[:, :4])
    torch.testing.assert_close(near_v[:, :4], out_v[:, :4])
    # An isolated atom aggregates nothing: only the output bias is left, and no vector.
    torch.testing.assert_close(out_s[:, 4], attention.out.bias.expand(2, C))
    assert (out_v[:, 4] == 0).all()


def test_dense_local_attention_gives_the_edge_lists_values_and_gradients(monkeypatch):
    """Padding, an isolated atom and pairs beyond the cutoff included."""
    attention = LocalAttention(C, CV, HEADS, RBF)
    pos = torch.rand(3, 7, 3) * 3.0
    pos[0, 6] = 20.0
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    s = torch.randn(3, 7, C, requires_grad=True)
    v = torch.randn(3, 7, 3, CV, requires_grad=True)
    positions = pos.clone().requires_grad_(True)
    results = []
    for dense_max_atoms in (0, 32):
        monkeypatch.setattr(temporal, "DENSE_LOCAL_MAX_ATOMS", dense_max_atoms)
        geometry = frame_geometry(positions, mask, RadiusGraph(CUTOFF, RBF), None)
        out_s, out_v = attention(s, v, geometry.graph, geometry.relative)
        real = mask[..., None]
        loss = (out_s * real).square().sum() + (out_v * real[..., None]).square().sum()
        inputs = [s, v, positions, attention.distance_filter.weight]
        results.append(((out_s * real, out_v * real[..., None]), torch.autograd.grad(loss, inputs)))
    assert isinstance(geometry.graph, DenseGraph)
    for tensors, reference in zip(results[1], results[0]):
        for tensor, expected in zip(tensors, reference):
            torch.testing.assert_close(tensor, expected, atol=2e-5, rtol=1e-4)


def test_equivariant_attention_weights_are_invariant_and_padding_is_ignored():
    attention = EquivariantAttention(C, CV, HEADS, positions=True)
    s, v, positions = torch.randn(3, 6, C), torch.randn(3, 6, 3, CV), torch.randn(3, 6, 3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 4:] = False
    out_s, out_v = attention(s, v, mask, positions)
    padded_s, padded_v = s.clone(), v.clone()
    padded_s[:, 4:], padded_v[:, 4:] = 100.0, 100.0
    moved = positions.clone()
    moved[:, 4:] = -50.0
    again_s, again_v = attention(padded_s, padded_v, mask, moved)
    torch.testing.assert_close(again_s[:, :4], out_s[:, :4])
    torch.testing.assert_close(again_v[:, :4], out_v[:, :4])
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    turned_s, turned_v = attention(s, (q @ v), mask, positions @ q.T + 2.0)
    torch.testing.assert_close(turned_s, out_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(turned_v, q @ out_v, atol=1e-5, rtol=1e-5)


def test_feed_forward_rescales_vectors_by_invariants_only():
    block = EquivariantFeedForward(C, CV)
    s, v = torch.randn(5, C), torch.randn(5, 3, CV)
    out_s, out_v = block(s, v)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    turned_s, turned_v = block(s, q @ v)
    torch.testing.assert_close(turned_s, out_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(turned_v, q @ out_v, atol=1e-5, rtol=1e-5)


def test_dense_attention_ignores_padding():
    attention = DenseAttention(C, CV, HEADS)
    s, v, pos = torch.randn(3, 6, C), torch.randn(3, 6, 3, CV), torch.randn(3, 6, 3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 4:] = False
    out_s, _ = attention(s, v, mask, pos)
    s_padded = s.clone()
    s_padded[:, 4:] = 100.0 * torch.randn(3, 2, C)
    torch.testing.assert_close(attention(s_padded, v, mask, pos)[0][:, :4], out_s[:, :4])


@pytest.mark.parametrize("local,global_", [(True, True), (True, False), (False, True)])
def test_spatial_block_shapes_and_padding(local, global_):
    block = SpatialBlock(C, CV, HEADS, RBF, local, global_)
    s, v, pos = torch.randn(4, 6, C), torch.randn(4, 6, 3, CV), torch.randn(4, 6, 3)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 5] = False
    geometry = frame_geometry(pos, mask, RadiusGraph(CUTOFF, RBF) if local else None, None)
    out_s, out_v = block(s, v, *geometry)
    assert out_s.shape == (4, 6, C) and out_v.shape == (4, 6, 3, CV)
    s_padded = s.clone()
    s_padded[:, 5] = torch.randn(4, C)
    torch.testing.assert_close(block(s_padded, v, *geometry)[0][:, :5], out_s[:, :5])


def test_spatial_block_needs_an_attention():
    with pytest.raises(ValueError, match="local or global"):
        SpatialBlock(C, CV, HEADS, RBF, local=False, global_=False)


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
    radius = RadiusGraph(CUTOFF, RBF)
    geometry = frame_geometry(frames[:, -1], mask, radius, None)
    encoder = TemporalEncoder(H, C, 8, CV, HEADS, 1, 2, RBF, True, True, max_z=10, latent_tokens=None)
    velocity = frame_velocities(frames)
    memory = encoder(z, velocity, frames - frames[:, -1:], geometry)
    assert memory.s.shape == (B * N, H, 8) and memory.v.shape == (B * N, H, 3, CV)
    assert memory.present_s.shape == (B * N, C) and memory.present_v.shape == (B * N, 3, CV)
    scale = torch.full((P,), 0.1)
    seed = torch.randn(B * N, P, 3)
    direct = DirectDecoder(P, C, 8, CV, HEADS)
    stepwise = StepwiseDecoder(P, C, 8, CV, HEADS, RBF, True, True, 10, None)
    outputs = {
        "direct": (direct(memory, None), direct(memory, seed)),
        "stepwise": tuple(
            stepwise(memory, z, mask, frames[:, -1], velocity[:, -1], scale, given, radius, None)
            for given in (None, seed)
        ),
    }
    for out, seeded in outputs.values():
        assert out.shape == (B * N, P, 3)
        assert not torch.allclose(seeded, out)  # the STI seed reaches the displacements
