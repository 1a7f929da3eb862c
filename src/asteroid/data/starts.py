"""Where a rollout starts: test windows of the data, or the last frames of a user's file, with the reference
trajectory to judge the rollout against."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asteroid.data.readers import load_trajectory
from asteroid.data.signature import DataSignature
from asteroid.errors import ConfigError, DataError, MissingTimestepError


@dataclass
class InitialConditions:
    """Where a rollout starts, and the true trajectory to judge it against."""

    history: np.ndarray  # (B, H, N, 3) Angstrom, frames `spacing` MD frames apart
    z: np.ndarray  # (N,)
    dt_fs: float  # between consecutive history (and predicted) frames
    start_frame: np.ndarray  # (B,) frame of `source` that is the last history frame
    source: str
    reference: np.ndarray  # (T, N, 3) the whole reference trajectory at its own frame spacing
    reference_dt_fs: float
    continuation: np.ndarray | None  # (B, F_c, N, 3) the true frames the rollout predicts, where the source has them
    box: np.ndarray | None = None  # (B, 3, 3) periodic cell of the last history frame, None for open boundaries
    from_structure: bool = False  # one structure, its history made by GFN2-xTB: no trajectory to judge against


def start_from_test_split(datamodule, batch: int, spacing: int, n_frames: int) -> InitialConditions:
    """Histories of `batch` test windows spread evenly over the test split (the first window when batch is 1)."""
    test = datamodule.datasets["test"]
    if batch > len(test):
        raise ConfigError(f"--batch {batch}: the test split has only {len(test)} windows; ask for at most that many")
    picks = np.linspace(0, len(test) - 1, batch).round().astype(int)
    rows = test.index[picks]  # (B, 2) trajectory, window start
    meta = [datamodule.trajectories[t] for t in rows[:, 0]]
    if any(m.z != meta[0].z or m.dt_fs != meta[0].dt_fs for m in meta):
        raise ConfigError(
            f"--batch {batch}: the test windows span trajectories of different molecules or frame "
            "spacings; roll out one at a time (choose it with --data.sources)"
        )
    coordinates = [datamodule.frames(t) for t in rows[:, 0]]  # each (T, N, 3)
    last = rows[:, 1] + datamodule.layout.history_offsets[-1]  # (B,)
    following = [R[end + spacing :: spacing][:n_frames] for R, end in zip(coordinates, last)]
    kept = min(len(frames) for frames in following)  # one length for all: the trajectory's end cuts some short
    windows = [test[i] for i in picks]
    return InitialConditions(
        history=np.stack([w["history"].numpy() for w in windows]),
        z=np.asarray(meta[0].z),
        dt_fs=spacing * meta[0].dt_fs,
        start_frame=last,
        source=meta[0].source,
        reference=coordinates[0],
        reference_dt_fs=meta[0].dt_fs,
        continuation=np.stack([frames[:kept] for frames in following]) if kept else None,
        box=np.stack([w["box"].numpy() for w in windows]) if meta[0].periodic else None,
    )


def start_from_file(
    path: str, trained: DataSignature, history: int, spacing: int, dt_fs: float | None = None
) -> InitialConditions:
    """The last `history` frames of a user's file, `spacing` training frames apart, checked against what the
    checkpoint was trained on (`trained`: its data signature, `TrajectoryDataModule.signature`). Needs no training
    data: the report then judges the rollout against the file's own frames. `dt_fs` (fs between the file's frames)
    where the file states none; a file of one structure needs none (GFN2-xTB makes the history, `xtb_history`)."""
    first_dt_fs, first_periodic = trained.dt_fs[0], trained.periodic[0]
    try:
        trajectory = load_trajectory(path, dt_fs=dt_fs)
    except MissingTimestepError:
        trajectory = load_trajectory(path, dt_fs=first_dt_fs)
        if trajectory.n_frames > 1:
            raise MissingTimestepError(
                f"{path}: does not say the time between its frames; pass --dt-fs (the model's data were "
                f"{first_dt_fs:g} fs apart)"
            ) from None
    from_structure = trajectory.n_frames == 1 and not first_periodic
    if from_structure:
        trajectory = xtb_history(path, (history - 1) * spacing + 1, first_dt_fs)
    if trained.heavy_atoms:
        trajectory = trajectory.select_atoms(np.flatnonzero(trajectory.z > 1))
    problem = trained.unknown_atoms(trajectory.z)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    dt_fs, periodic = trained.record_of(trajectory.z)
    box = trajectory.box if trajectory.box is not None and periodic else None
    if periodic and box is None:
        raise DataError(f"{path}: the model was trained on a periodic system and this file has no periodic cell")
    interval_fs = spacing * dt_fs  # time between history frames
    step = interval_fs / trajectory.dt_fs  # frames of the file between history frames
    if abs(step - round(step)) > 1e-6 or round(step) < 1:
        raise DataError(
            f"{path}: its frames are {trajectory.dt_fs:g} fs apart, but the model takes history frames "
            f"{interval_fs:g} fs apart ({spacing} frames of {dt_fs:g} fs), which is not a whole number "
            "of this file's frames"
        )
    step, needed = round(step), (history - 1) * round(step) + 1
    if trajectory.n_frames < needed:
        raise DataError(
            f"{path}: {trajectory.n_frames} frame(s), but the history needs {needed} (the last "
            f"{history} frames, {interval_fs:g} fs apart)"
        )
    return InitialConditions(
        history=np.asarray(trajectory.R[-needed::step])[None],
        z=trajectory.z,
        dt_fs=interval_fs,
        start_frame=np.array([trajectory.n_frames - 1]),
        source=str(path),
        reference=np.asarray(trajectory.R),
        reference_dt_fs=trajectory.dt_fs,
        continuation=None,
        box=None if box is None else box[-1:],
        from_structure=from_structure,
    )


def xtb_history(path: str, frames: int, dt_fs: float):
    """The first `frames` frames (`dt_fs` apart) of GFN2-xTB MD at 500 K from the one structure in `path`: a history
    made as the training data were (relaxed, thermalised, then NVE), for a rollout from a single structure."""
    from asteroid.simulation.md import simulate  # here: tblite loads only when a history must be made

    print(f"{path}: one structure; making its history by {frames} steps of GFN2-xTB MD at 500 K", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "history.npz"
        simulate(out, structure=path, frames=frames, timestep_fs=dt_fs, progress=False)
        return load_trajectory(out)


def with_reference(start: InitialConditions, path: str) -> InitialConditions:
    """`start` judged against the trajectory in `path` (same atoms, any frame step) instead of its own source."""
    trajectory = load_trajectory(path)
    if not np.array_equal(trajectory.z, start.z):
        raise DataError(
            f"{path}: its atoms (z = {trajectory.z.tolist()}) are not the rollout's (z = {start.z.tolist()}); "
            "a reference must be the same molecule"
        )
    return dataclasses.replace(start, reference=np.asarray(trajectory.R), reference_dt_fs=trajectory.dt_fs)


def repeat_starts(start: InitialConditions, samples: int) -> InitialConditions:
    """Each initial condition `samples` times in a row, for an ensemble of stochastic rollouts."""

    def repeat(array):
        return None if array is None else np.repeat(array, samples, axis=0)

    return dataclasses.replace(
        start,
        history=repeat(start.history),
        start_frame=repeat(start.start_frame),
        continuation=repeat(start.continuation),
        box=repeat(start.box),
    )
