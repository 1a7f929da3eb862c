"""ESTAG's rollout metric (GLAD-RUC/ESTAG rollout/md_rollout.py), for the peers' table of the `estag` protocol.

The official script takes one molecule's whole trajectory, x[:-1] with the hydrogens dropped, draws one pivot with
`np.random.randint(num_past * delta, n - rs * delta)` after `np.random.seed(1)`, feeds the 10 frames
x[pivot - 100], ..., x[pivot - 10] to the model, and feeds each forecast back for `rs` rounds; round r is scored
against x[pivot + 10 r] by the MSE over atoms and x, y, z, and the paper reports rounds 100 and 200 (r = 99, 199).
Two things in that rule are the official script's, not ours, and the table says so: the pivot may fall anywhere in
the trajectory, training frames included, and a single pivot makes the figure one trajectory's.
"""

from __future__ import annotations

import numpy as np
import torch

from asteroid.errors import DataError, DivergedError
from asteroid.models.base import ForecastModel
from asteroid.models.rollout import rollout
from asteroid.runs import newest

NUM_PAST, DELTA = 10, 10  # the preset's history: 10 frames, 10 apart; each round forecasts the frame 10 later
ROUNDS = 200
REPORTED_ROUNDS = (100, 200)
PIVOT_SEED = 1  # the script's --seed default


def estag_pivot(n_frames: int, rounds: int = ROUNDS, seed: int = PIVOT_SEED) -> int:
    """The official pivot for a trajectory of n_frames frames (after dropping its last, as the loader does)."""
    low, high = NUM_PAST * DELTA, n_frames - rounds * DELTA
    if high <= low:
        raise DataError(
            f"ESTAG's rollout metric needs more than {low + rounds * DELTA} frames for {rounds} rounds, "
            f"the trajectory has {n_frames}"
        )
    return int(np.random.RandomState(seed).randint(low, high, 1)[0])


@torch.inference_mode()
def estag_rollout_mse(net: ForecastModel, frames: np.ndarray, z: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """(rounds,) MSE (Angstrom^2) of each round of the official rollout of `net` (the estag preset's model: 10
    frames 10 apart in, the next one out) over frames (T, N, 3) Angstrom, the whole trajectory with the hydrogens
    already dropped; z (N,). The forecast mean, nothing stripped or rescaled, as the official script feeds back;
    infinity from the round whose forecast is not finite on (the official script would print NaN)."""
    x = np.asarray(frames[:-1], dtype=np.float32)
    pivot = estag_pivot(len(x), rounds)
    history = torch.from_numpy(x[[pivot - i * DELTA for i in range(NUM_PAST, 0, -1)]])[None]  # (1, 10, N, 3)
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


def estag_rollout_rows(name: str, key: tuple, arguments: list[str]) -> list[dict]:
    """ESTAG's rollout metric (`peer_rollout`) of run `name` ({molecule, model, seed} = key, trained with
    `fit_arguments` arguments) with the checkpoint it was tested with, the best one (a model without parameters has
    none: built from the arguments); no rows when the run's folder is not here."""
    from asteroid.lightning_cli import from_config, load_trained

    if newest(name, "test_metrics.csv") is None:
        return []
    if (best := newest(name, "best-*.ckpt")) is not None:
        module, data = load_trained(best, arguments)
    else:
        cli = from_config(arguments)
        module, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("test")
    mse = estag_rollout_mse(module.net.eval(), data.frames(0), np.asarray(data.trajectories[0].z))
    molecule, model, seed = key
    return [
        {"molecule": molecule, "model": model, "seed": seed, "round": r, "mse": mse[r - 1]} for r in REPORTED_ROUNDS
    ]
