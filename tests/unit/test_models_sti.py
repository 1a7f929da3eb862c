"""STI transformation: Hankel bookkeeping against hand-computed cases, losses, heads."""

import torch

from asteroid.models.asteroid.sti import (
    ConjugateHead,
    STIHead,
    antidiagonal_mean,
    conjugate_loss,
    consistency_loss,
    future_mask,
    hankel,
    hankel_time_index,
    known_mask,
    primary_loss,
)

T, F = True, False


def hand_delays() -> torch.Tensor:
    """H = 3, L = 3 delay entries Y[t, j] = 10 t + j laid out as (B=1, H, N=1, L, 1)."""
    values = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    return values[None, :, None, :, None]


def test_hankel_layout_by_hand():
    # H = 3 history frames, delay L = 3, horizon P = 2: times 0..4, history 0..2, targets 3..4.
    assert hankel_time_index(3, 3).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    # t + j <= H + P - 1 = 4: with L = P + 1 every entry is known in training.
    assert known_mask(3, 3, 2).tolist() == [[T, T, T], [T, T, T], [T, T, T]]
    # With only P = 1 target the bottom-right entry (time 4) is unknown.
    assert known_mask(3, 3, 1).tolist() == [[T, T, T], [T, T, T], [T, T, F]]
    # Future: t + j >= H = 3, the lower-right triangle.
    assert future_mask(3, 3).tolist() == [[F, F, F], [F, F, T], [F, T, T]]


def test_antidiagonal_mean_by_hand():
    # time 0: {0}; 1: {1, 10}; 2: {2, 11, 20}; 3: {12, 21}; 4: {22}
    means = antidiagonal_mean(hand_delays())
    assert means.shape == (1, 5, 1, 1)
    assert means.flatten().tolist() == [0.0, 5.5, 11.0, 16.5, 22.0]


def test_hankel_of_frames():
    frames = torch.arange(5.0)[None, :, None, None].expand(2, 5, 4, 3)  # frame value = its time
    delays = hankel(frames, 3, 3)
    assert delays.shape == (2, 3, 4, 3, 3)
    torch.testing.assert_close(delays[0, :, 0, :, 0], hankel_time_index(3, 3).float())


def test_consistency_loss_by_hand():
    mask = torch.ones(1, 1, dtype=torch.bool)
    # Squared deviations from the anti-diagonal means: time 1: 2 x 4.5^2; time 2: 9^2 + 0 + 9^2;
    # time 3: 2 x 4.5^2; times 0 and 4 have one entry. Sum 243 over 9 entries.
    assert consistency_loss(hand_delays(), mask).item() == 27.0
    consistent = hankel(torch.randn(1, 5, 1, 3), 3, 3)
    assert consistency_loss(consistent, mask).item() < 1e-12


def test_primary_loss_uses_known_entries_and_real_atoms_only():
    B, H, L, P, N = 2, 3, 3, 1, 4
    frames = torch.randn(B, H + P, N, 3)  # times 0..3 known, time 4 unknown
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 3] = False
    delays = hankel(frames, H, L).clone()
    delays[:, 2, :, 2] = 1e3  # entry (2, 2) is time 4: unknown
    delays[1, :, 3] = -1e3  # a padded atom
    assert primary_loss(delays, frames, mask).item() == 0.0
    delays[0, 0, 0, 1, 2] += 3.0  # one known entry off by 3: 9 over (8 entries x 7 atoms x 3) values
    torch.testing.assert_close(primary_loss(delays, frames, mask), torch.tensor(9.0 / (8 * 7 * 3)))


def test_conjugate_loss_ignores_padding():
    frames = torch.randn(2, 3, 4, 3)
    mask = torch.tensor([[T, T, T, T], [T, T, F, F]])
    reconstruction = frames.clone()
    reconstruction[1, :, 2:] += 5.0
    assert conjugate_loss(reconstruction, frames, mask).item() == 0.0
    reconstruction[0, 0, 0, 0] += 2.0
    torch.testing.assert_close(conjugate_loss(reconstruction, frames, mask), torch.tensor(4.0 / (3 * 6 * 3)))


def test_sti_heads_shapes_and_equivariance():
    s, v = torch.randn(10, 4, 16), torch.randn(10, 4, 3, 8)  # B*N = 2*5 atoms, H = 4 tokens
    delays = STIHead(16, 8, delay=6)(s, v, batch=2)
    assert delays.shape == (2, 4, 5, 6, 3)
    conjugate = ConjugateHead(16, delay=6)
    assert conjugate(delays).shape == (2, 4, 5, 3)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    head = STIHead(16, 8, delay=6)
    torch.testing.assert_close(head(s, q @ v, 2), head(s, v, 2) @ q.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conjugate(delays @ q.T), conjugate(delays) @ q.T, atol=1e-5, rtol=1e-5)
