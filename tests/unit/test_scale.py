"""Large systems: cell-list neighbours (against the dense lists), latent-token global attention, streamed windows."""

from pathlib import Path

import numpy as np
import pytest
import torch

from asteroid.errors import ConfigError
from asteroid.models import Asteroid
from asteroid.models.asteroid.spatial import DenseAttention, LatentAttention
from asteroid.models.asteroid.temporal import frame_geometry
from asteroid.models.neighbors import CELL_LIST_MIN_ATOMS, RadiusGraph, radius_neighbors

C, HEADS = 16, 2
TRICLINIC = torch.tensor([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, -0.7, 6.2]])


def random_frames(M=3, N=40, extent=6.0):
    """Positions spread over [-1, extent - 1)^3 (partly outside a box at the origin); the last frame has padding
    at both ends."""
    pos = torch.rand(M, N, 3) * extent - 1.0
    mask = torch.ones(M, N, dtype=torch.bool)
    mask[-1, 0] = False
    mask[-1, N - 3 :] = False
    return pos, mask


def brute_force_periodic(pos, mask, cutoff, box):
    """{(source node, target node, shift): distance} over every image of every pair, by explicit loops."""
    M, N, _ = pos.shape
    pairs = {}
    for m in range(M):
        for i in range(N):
            for j in range(N):
                if not (mask[m, i] and mask[m, j]):
                    continue
                for shift in np.ndindex(5, 5, 5):  # images up to two cells away: beyond the cutoff's reach
                    shift = np.array(shift) - 2
                    if i == j and not shift.any():
                        continue
                    d = np.linalg.norm(pos[m, j] - pos[m, i] + shift @ box[m])
                    if d < cutoff:
                        pairs[(m * N + j, m * N + i, tuple(shift))] = d
    return pairs


@pytest.mark.parametrize("periodic", [False, True])
def test_cell_list_gives_the_dense_pairs_in_the_same_order(periodic):
    pos, mask = random_frames()
    box = TRICLINIC.expand(3, 3, 3) if periodic else None
    cutoff = 4.5 if periodic else 2.5  # periodic: above half the box, so some pairs meet in two images
    dense = radius_neighbors(pos, mask, cutoff, box, method="dense")
    cell_list = radius_neighbors(pos, mask, cutoff, box, method="cell_list")
    assert dense[0].shape[1] > 100
    assert torch.equal(dense[0], cell_list[0])
    torch.testing.assert_close(dense[1], cell_list[1])


def test_periodic_neighbors_match_brute_force_images():
    pos, mask = random_frames(M=2, N=12)
    box = TRICLINIC.expand(2, 3, 3)
    edge_index, distance, _ = radius_neighbors(pos, mask, 4.5, box, method="dense")
    expected = brute_force_periodic(pos.double().numpy(), mask.numpy(), 4.5, box.double().numpy())
    # one edge per (pair, image): compare the multiset of distances of every ordered pair
    found = {}
    for (s, t), d in zip(edge_index.T.tolist(), distance.tolist()):
        found.setdefault((s, t), []).append(d)
    wanted = {}
    for (s, t, _), d in expected.items():
        wanted.setdefault((s, t), []).append(d)
    assert found.keys() == wanted.keys()
    for pair in wanted:
        np.testing.assert_allclose(sorted(found[pair]), sorted(wanted[pair]), atol=1e-4)
    assert any(len(d) > 1 for d in wanted.values())  # the case above exercises several images of one pair


def test_auto_uses_the_cell_list_for_large_frames_with_identical_result(monkeypatch):
    import asteroid.models.neighbors as neighbors

    pos = torch.rand(2, CELL_LIST_MIN_ATOMS + 1, 3) * 12.0
    mask = torch.ones(2, CELL_LIST_MIN_ATOMS + 1, dtype=torch.bool)
    dense = radius_neighbors(pos, mask, 3.0, method="dense")
    calls = []
    original = neighbors._cell_list_pairs
    monkeypatch.setattr(neighbors, "_cell_list_pairs", lambda *args: calls.append(1) or original(*args))
    auto = radius_neighbors(pos, mask, 3.0)
    assert calls and torch.equal(auto[0], dense[0])
    radius_neighbors(pos[:, :CELL_LIST_MIN_ATOMS], mask[:, :CELL_LIST_MIN_ATOMS], 3.0)
    assert len(calls) == 1  # small frames stay on the dense method


def test_periodic_distance_gradient_flows_and_box_checks():
    pos, mask = random_frames(M=1, N=10)
    pos.requires_grad_(True)
    distance = radius_neighbors(pos, mask, 4.0, TRICLINIC[None], method="cell_list").distance
    distance.sum().backward()
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="narrowest width"):
        radius_neighbors(pos, mask, 6.0, TRICLINIC[None])
    with pytest.raises(ConfigError, match="neighbour method"):
        radius_neighbors(pos, mask, 2.0, method="octree")


def test_cell_list_handles_frames_without_pairs_and_fully_padded_frames():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]])
    mask = torch.tensor([[True, True], [False, False]])
    edge_index, distance, _ = radius_neighbors(pos, mask, 2.0, method="cell_list")
    assert edge_index.shape == (2, 0) and distance.shape == (0,)


def test_recomputed_local_attention_gives_the_same_values_and_gradients(monkeypatch):
    import asteroid.models.asteroid.spatial as spatial
    import asteroid.models.asteroid.temporal as temporal

    attention = spatial.LocalAttention(C, 4, HEADS, 4)
    pos, mask = random_frames(M=2, N=30)
    monkeypatch.setattr(temporal, "DENSE_LOCAL_MAX_ATOMS", 0)  # recomputation is the edge list's
    geometry = frame_geometry(pos, mask, RadiusGraph(2.5, 4), None)
    s = torch.randn(2, 30, C, requires_grad=True)
    v = torch.randn(2, 30, 3, 4, requires_grad=True)
    results = []
    for recompute in (1 << 30, 0):  # kept for backward; recomputed in the backward pass
        monkeypatch.setattr(spatial, "RECOMPUTE_MIN_EDGE_VALUES", recompute)
        out_s, out_v = attention(s, v, geometry.graph, geometry.relative)
        loss = out_s.square().sum() + out_v.square().sum()
        results.append(((out_s, out_v), torch.autograd.grad(loss, [s, v, attention.distance_filter.weight])))
    for tensors, reference in zip(results[1], results[0]):
        for tensor, expected in zip(tensors, reference):
            torch.testing.assert_close(tensor, expected)


# ---- latent-token global attention ----------------------------------------------------------------------------
def test_latent_attention_shapes_padding_and_equivariance():
    attention = LatentAttention(C, 4, HEADS, tokens=4)
    s, v = torch.randn(3, 7, C), torch.randn(3, 7, 3, 4)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, 5:] = False
    out_s, out_v = attention(s, v, mask, None)
    assert out_s.shape == (3, 7, C) and out_v.shape == (3, 7, 3, 4)
    s_padded, v_padded = s.clone(), v.clone()
    s_padded[:, 5:], v_padded[:, 5:] = 100.0, 100.0
    torch.testing.assert_close(attention(s_padded, v_padded, mask, None)[1][:, :5], out_v[:, :5])
    permutation = torch.randperm(7)
    torch.testing.assert_close(
        attention(s[:, permutation], v[:, permutation], mask[:, permutation], None)[0], out_s[:, permutation]
    )
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    torch.testing.assert_close(attention(s, q @ v, mask, None)[1], q @ out_v, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_s[:, 0], out_s[:, 1])  # atoms read different mixtures of the tokens


def test_asteroid_with_latent_tokens_forecasts_and_rejects_bad_counts():
    B, H, P, N = 2, 3, 2, 6
    model = Asteroid(H, P, hidden=16, heads=2, num_rbf=4, latent_tokens=3)
    assert sum(isinstance(m, LatentAttention) for m in model.modules()) == 2  # one per spatial layer
    assert not any(isinstance(m, DenseAttention) for m in model.modules())
    history = torch.randn(B, H, N, 3)
    z = torch.full((B, N), 6)
    mask = torch.ones(B, N, dtype=torch.bool)
    out = model(history, z, mask, target=torch.randn(B, P, N, 3))
    assert out.pred.shape == (B, P, N, 3)
    out.pred.sum().backward()
    assert model.encoder.spatial[0].global_attention.tokens.grad is not None
    with pytest.raises(ConfigError, match="latent_tokens"):
        Asteroid(H, P, latent_tokens=0)


# ---- streaming windows -----------------------------------------------------------------------------------------
def anonymous_memory_mb() -> float:
    """Resident memory not backed by a file (heap, tensors): /proc/self/status RssAnon, MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_windows_stream_from_the_cache_without_loading_the_trajectory(tmp_path):
    """Reading every window of a 240 MB cached trajectory adds little anonymous memory: the frames of a window are
    gathered from the memory map (page cache the system can evict), never the whole trajectory."""
    from asteroid.data.dataset import WindowDataset
    from asteroid.data.windows import WindowLayout

    T, N = 2000, 10000
    cache = tmp_path / "big.npy"
    np.lib.format.open_memmap(cache, mode="w+", dtype=np.float32, shape=(T, N, 3)).flush()  # 240 MB, sparse
    layout = WindowLayout.regular(history=4, horizon=4, spacing=25)
    starts = np.arange(0, T - layout.span + 1, layout.span)
    dataset = WindowDataset([cache], [np.ones(N, dtype=np.int64)], np.stack([0 * starts, starts], 1), layout)
    before = anonymous_memory_mb()
    for i in range(len(dataset)):  # touches every frame of the file
        window = dataset[i]
    assert window["history"].shape == (4, N, 3)
    assert isinstance(dataset._coordinates[0], np.memmap)
    assert anonymous_memory_mb() - before < 40  # the whole trajectory would be 229 MiB


@pytest.mark.parametrize("method", ["dense", "cell_list"])
def test_periodic_neighbors_do_not_care_which_image_an_atom_sits_in(method):
    # unwrapped trajectories leave atoms cells away from the box: moving each by whole cell vectors changes nothing
    pos, mask = random_frames(M=2, N=30)
    pos, box = pos.double(), TRICLINIC.double().expand(2, 3, 3)  # float64: moved positions lose no digits
    cells = torch.randint(-3, 4, (2, 30, 3)).to(pos.dtype)
    moved = pos + torch.einsum("mnk,mkl->mnl", cells, box)
    before = radius_neighbors(pos, mask, 4.5, box, method=method)
    after = radius_neighbors(moved, mask, 4.5, box, method=method)
    assert len(before.distance) > 100
    key = lambda n: sorted(zip(n.edge_index.T.tolist(), n.distance.round(decimals=6).tolist()))  # noqa: E731
    assert key(before) == key(after)
    # the image translation takes each source to its neighbour position, whichever cell it started from
    source, target = after.edge_index
    flat = moved.reshape(-1, 3)
    torch.testing.assert_close((flat[source] + after.image - flat[target]).norm(dim=-1), after.distance)
