"""ESTAG's rollout metric (GLAD-RUC/ESTAG rollout/md_rollout.py), for the peers' table of the `estag` protocol.

The official script takes one molecule's whole trajectory, x[:-1] with the hydrogens dropped, draws one pivot with
`np.random.randint(num_past * delta, n - rs * delta)` after `np.random.seed(1)`, feeds the 10 frames
x[pivot - 100], ..., x[pivot - 10] to the model, and feeds each forecast back for `rs` rounds; round r is scored
against x[pivot + 10 r] by the MSE over atoms and x, y, z, and the paper reports rounds 100 and 200 (r = 99, 199).
Two things in that rule are the official script's, not ours, and the table says so: the pivot may fall anywhere in
the trajectory, training frames included, and a single pivot makes the figure one trajectory's.

Beside the official rule, two more forecasts from the same start: a stochastic model's mean over sampled rollouts
(`ensemble_rollout_mse`), and no model at all, the mean of the 10 history frames held (`history_mean_mse`).
"""

from __future__ import annotations

import numpy as np
import torch

from asteroid.errors import DataError, DivergedError
from asteroid.models.base import ForecastModel
from asteroid.models.baselines.extrapolation import LastFrame
from asteroid.models.rollout import default_thermostat, rollout
from asteroid.runs import newest

NUM_PAST, DELTA = 10, 10  # the preset's history: 10 frames, 10 apart; each round forecasts the frame 10 later
ROUNDS = 200
REPORTED_ROUNDS = (100, 200)
PIVOT_SEED = 1  # the script's --seed default
ENSEMBLE = 16  # sampled rollouts whose mean is a stochastic model's second forecast (`ensemble_rollout_mse`)
HISTORY_MEAN = "mean of the history frames (no model)"


def estag_pivot(n_frames: int, rounds: int = ROUNDS, seed: int = PIVOT_SEED) -> int:
    """The official pivot for a trajectory of n_frames frames (after dropping its last, as the loader does)."""
    low, high = NUM_PAST * DELTA, n_frames - rounds * DELTA
    if high <= low:
        raise DataError(
            f"ESTAG's rollout metric needs more than {low + rounds * DELTA} frames for {rounds} rounds, "
            f"the trajectory has {n_frames}"
        )
    return int(np.random.RandomState(seed).randint(low, high, 1)[0])


def official_start(frames: np.ndarray, rounds: int) -> tuple[np.ndarray, int, torch.Tensor]:
    """The official script's frames x (x[:-1] of frames (T, N, 3), float32), pivot, and first history (1, 10, N, 3)."""
    x = np.asarray(frames[:-1], dtype=np.float32)
    pivot = estag_pivot(len(x), rounds)
    return x, pivot, torch.from_numpy(x[[pivot - i * DELTA for i in range(NUM_PAST, 0, -1)]])[None]


def round_errors(forecast: np.ndarray, x: np.ndarray, pivot: int) -> np.ndarray:
    """(R,) MSE over atoms and x, y, z of forecast (R, N, 3) against the true frames of rounds 1..R."""
    truth = x[pivot + DELTA * np.arange(len(forecast))]
    return ((np.asarray(forecast, dtype=np.float64) - truth) ** 2).mean(axis=(1, 2))


@torch.inference_mode()
def estag_rollout_mse(net: ForecastModel, frames: np.ndarray, z: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """(rounds,) MSE (Angstrom^2) of each round of the official rollout of `net` (the estag preset's model: 10
    frames 10 apart in, the next one out) over frames (T, N, 3) Angstrom, the whole trajectory with the hydrogens
    already dropped; z (N,). The forecast mean, nothing stripped or rescaled, as the official script feeds back;
    infinity from the round whose forecast is not finite on (the official script would print NaN)."""
    x, pivot, history = official_start(frames, rounds)
    numbers = torch.as_tensor(z, dtype=torch.int64)[None]  # (1, N)
    mask = torch.ones_like(numbers, dtype=torch.bool)
    errors = np.full(rounds, np.inf)
    for r in range(rounds):
        try:
            frame = rollout(net, history, numbers, mask, 1, sample=False, keep_rigid_motion=True)  # (1, 1, N, 3)
        except DivergedError:
            break
        errors[r] = float(((frame[0, 0].double().numpy() - x[pivot + DELTA * r]) ** 2).mean())
        history = torch.cat([history[:, 1:], frame], dim=1)
    return errors


@torch.inference_mode()
def ensemble_rollout_mse(
    net: ForecastModel, frames: np.ndarray, z: np.ndarray, rounds: int = ROUNDS, members: int = ENSEMBLE
) -> np.ndarray:
    """(rounds,) MSE of the mean over `members` rollouts of a stochastic net from the official start, each member
    fed back its own draws as `asteroid rollout` runs them (rigid motion stripped, the thermostat), seeded. Hundreds
    of femtoseconds on, the frame that will come is unknown to within the molecule's thermal spread, and the forecast
    of least MSE is the mean of what can come, not one trajectory: a forecast that relaxes to the mean structure
    scores about half of one that keeps vibrating, which is where holding the last frame stays. Infinity throughout
    when a member diverges."""
    x, pivot, history = official_start(frames, rounds)
    numbers = torch.as_tensor(z, dtype=torch.int64)[None].expand(members, -1)  # (M, N)
    mask = torch.ones_like(numbers, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    try:
        drawn = rollout(
            net, history.expand(members, -1, -1, -1), numbers, mask, rounds, sample=True,
            thermostat_coupling=default_thermostat(net), generator=generator,
        )  # fmt: skip
    except DivergedError:
        return np.full(rounds, np.inf)
    return round_errors(drawn.mean(0).numpy(), x, pivot)


def history_mean_mse(frames: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """(rounds,) MSE of holding the mean of the 10 history frames: no model, the mean structure as well as the
    history tells it."""
    x, pivot, history = official_start(frames, rounds)
    return round_errors(history[0].mean(0).numpy()[None].repeat(rounds, 0), x, pivot)


def estag_rollout_rows(name: str, key: tuple, arguments: list[str]) -> list[dict]:
    """ESTAG's rollout metric (`peer_rollout`) of run `name` ({molecule, model, seed} = key, trained with
    `fit_arguments` arguments) with the checkpoint it was tested with, the best one (a model without parameters has
    none: built from the arguments); no rows when the run's folder is not here."""
    from asteroid.api.forecaster import load_with_data
    from asteroid.lightning_cli import from_config

    if newest(name, "test_metrics.csv") is None:
        return []
    if (best := newest(name, "best-*.ckpt")) is not None:
        forecaster, data = load_with_data(best, arguments)
        net = forecaster.net
    else:
        cli = from_config(arguments)
        net, data = cli.model.net.eval(), cli.datamodule
    data.prepare_data()
    data.setup("test")
    frames, z = data.frames(0), np.asarray(data.trajectories[0].z)
    molecule, model, seed = key
    scored = {model: estag_rollout_mse(net, frames, z)}
    if net.noise is not None:
        scored[f"{model}, mean of {ENSEMBLE} sampled rollouts"] = ensemble_rollout_mse(net, frames, z)
    if isinstance(net, LastFrame):  # beside holding the last frame, holding the mean structure the history tells
        scored[HISTORY_MEAN] = history_mean_mse(frames)
    return [
        {"molecule": molecule, "model": name, "seed": seed, "round": r, "mse": mse[r - 1]}
        for name, mse in scored.items()
        for r in REPORTED_ROUNDS
    ]
