"""ESTAG's rollout metric: the official pivot, and the MSE of each fed-back round against the true frame."""

import numpy as np
import pytest
import torch

from asteroid.errors import DataError
from asteroid.models import LastFrame, LinearExtrapolation
from asteroid.models.base import Forecast, ForecastModel
from asteroid.models.noise import GaussMarkovNoise
from asteroid.studies.accuracy_tables import rollout_table
from asteroid.studies.peer_rollout import DELTA, ensemble_rollout_mse, estag_pivot, estag_rollout_mse

from helpers import ETHANOL_Z, harmonic_frames


def test_the_pivot_is_the_official_scripts_draw():
    n = 20_000
    np.random.seed(1)  # rollout/md_rollout.py: seed 1, then np.random.randint(num_past * delta, n - rs * delta, 1)
    official = np.random.randint(10 * 10, n - 200 * 10, 1)[0]
    assert estag_pivot(n) == official


def test_each_round_is_scored_against_the_frame_ten_later():
    frames = harmonic_frames(3000, 9).astype(np.float32)  # (T, N, 3)
    z = np.asarray(ETHANOL_Z)
    rounds = 30
    pivot = estag_pivot(len(frames) - 1, rounds)
    # the last frame held: every round forecasts x[pivot - 10], the last history frame
    held = estag_rollout_mse(LastFrame(history=10, horizon=1), frames, z, rounds)
    truth = frames[pivot + DELTA * np.arange(rounds)]
    np.testing.assert_allclose(held, ((truth - frames[pivot - DELTA]) ** 2).mean(axis=(1, 2)), rtol=1e-5)
    # linear extrapolation fed its own forecasts continues the last history step round after round
    linear = estag_rollout_mse(LinearExtrapolation(history=10, horizon=1), frames, z, rounds)
    step = frames[pivot - DELTA] - frames[pivot - 2 * DELTA]
    expected = frames[pivot - DELTA] + step * np.arange(1, rounds + 1)[:, None, None]
    np.testing.assert_allclose(linear, ((truth - expected) ** 2).mean(axis=(1, 2)), rtol=1e-4)
    assert held.shape == linear.shape == (rounds,)


def test_too_short_a_trajectory_is_refused_in_one_line():
    with pytest.raises(DataError, match="needs more than 2100 frames for 200 rounds, the trajectory has 1500"):
        estag_pivot(1500)


class Exploding(ForecastModel):
    """Multiplies the last frame by 1e10 each round: float32 overflows in the fourth."""

    def forward(self, history, z, mask, target=None, sampling_prob=0.0, box=None):
        return Forecast(history[:, -1:] * 1e10, {})


def test_a_rollout_that_diverges_scores_infinity_from_that_round_on():
    frames = harmonic_frames(3000, 9).astype(np.float32)
    errors = estag_rollout_mse(Exploding(history=10, horizon=1), frames, np.asarray(ETHANOL_Z), rounds=6)
    assert np.isfinite(errors[:3]).all() and np.isinf(errors[3:]).all()


class Still(ForecastModel):
    """The last frame held: what moves comes from the noise head's draws."""

    def forward(self, history, z, mask, target=None, sampling_prob=0.0, box=None):
        return Forecast(history[:, -1:], {})


def test_the_mean_of_sampled_rollouts_averages_their_scatter_away():
    """Members that wander apart from one start: their mean stays nearer the start than any one of them, and with
    nothing to average (one member) it is that member."""
    frames = np.repeat(harmonic_frames(1, 9).astype(np.float32), 2500, axis=0)  # a molecule at rest
    torch.manual_seed(0)
    net = Still(history=10, horizon=1).eval()
    net.set_displacement_scale(torch.tensor([0.05]))
    net.noise = GaussMarkovNoise(10, 1)
    z = np.asarray(ETHANOL_Z)
    one = ensemble_rollout_mse(net, frames, z, rounds=20, members=1)
    many = ensemble_rollout_mse(net, frames, z, rounds=20, members=64)
    assert one.shape == many.shape == (20,) and (one[-5:] > 0).all()
    assert many[-5:].mean() < 0.2 * one[-5:].mean()


def test_the_table_says_how_many_seeds_diverged():
    rows = [
        {"molecule": "m", "model": model, "seed": seed, "round": r, "mse": mse}
        for model, seed, mse in (("steady", "0", "0.002"), ("steady", "1", "0.004"), ("wild", "0", "inf"))
        for r in ("100", "200")
    ]
    table = "\n".join(rollout_table(rows))
    assert "| steady | 2 | 0.003 ± 0.001 | 0.003 ± 0.001 |" in table
    assert "| wild | 1 | diverged (1 of 1 seeds) | diverged (1 of 1 seeds) |" in table
