"""Curves against time after the start: the coordinate error against the continuation and the deviation of
features, binned over geometrically growing time bins."""

from __future__ import annotations

import math

import numpy as np
import torch

from asteroid.data.geometry import kabsch_rmsd

TIME_BINS = 50
INDEPENDENT_PAIRS = 1000
DECORRELATION_QUANTILE = 0.05  # of the Kabsch RMSD of independent frame pairs


def time_bins(n_frames: int, n_bins: int = TIME_BINS) -> np.ndarray:
    """Start frames of at most n_bins bins over 0..n_frames-1: one frame each at first, growing geometrically."""
    return np.unique(np.floor(np.geomspace(1, n_frames + 1, n_bins + 1)[:-1]).astype(np.int64) - 1)


def binned(values: np.ndarray, dt_fs: float) -> tuple[list[float], list[float | None]]:
    """Mean over trajectories and the frames of each time bin of values (B, F), ignoring non-finite ones; returns
    the bins' mean times (fs after the start) and the means."""
    starts = time_bins(values.shape[1])
    ends = np.append(starts[1:], values.shape[1])
    times = (np.arange(values.shape[1]) + 1) * dt_fs
    means = []
    for start, end in zip(starts, ends):
        block = values[:, start:end]
        finite = np.isfinite(block)
        means.append(float(block[finite].mean()) if finite.any() else None)
    return [float(times[s:e].mean()) for s, e in zip(starts, ends)], means


def _first_reaching(curve: np.ndarray, level: float, dt_fs: float) -> float | None:
    """Time of the first frame whose value reaches level (non-finite counts as reached), or None."""
    reached = ~(curve < level)
    return float((reached.argmax() + 1) * dt_fs) if reached.any() else None


def coordinate_error(predicted: np.ndarray, continuation: np.ndarray, reference: np.ndarray, dt_fs: float) -> dict:
    """Kabsch and plain RMSD of predicted (B, F, N, 3) against continuation (B, F_c, N, 3), binned over time, with
    the level of two independent reference frames and the decorrelation time."""
    B, F_c, N, _ = continuation.shape
    pred = torch.from_numpy(predicted[:, :F_c])
    true = torch.from_numpy(continuation)
    every_atom = torch.ones(B, F_c, N, dtype=torch.bool)
    kabsch = kabsch_rmsd(pred, true, every_atom).numpy()  # (B, F_c)
    plain = (pred - true).square().sum(-1).mean(-1).sqrt().numpy()  # (B, F_c)
    rng = np.random.default_rng(0)
    i = rng.integers(len(reference), size=INDEPENDENT_PAIRS)
    j = rng.integers(len(reference) - 1, size=INDEPENDENT_PAIRS)
    j += j >= i  # two different frames
    first, second = torch.from_numpy(reference[i]), torch.from_numpy(reference[j])
    independent = kabsch_rmsd(first, second, torch.ones(INDEPENDENT_PAIRS, N, dtype=torch.bool)).numpy()
    level = float(np.quantile(independent, DECORRELATION_QUANTILE))
    times, kabsch_binned = binned(kabsch, dt_fs)
    return {
        "frames": F_c,
        "time_fs": times,
        "kabsch_rmsd": kabsch_binned,
        "rmsd": binned(plain, dt_fs)[1],
        "independent_kabsch_rmsd": float(independent.mean()),
        "decorrelation_level": level,
        "independent_rmsd": (first - second).square().sum(-1).mean(-1).sqrt().mean().item(),
        # a diverged (NaN) trajectory counts as decorrelated
        "decorrelation_time_fs": _first_reaching(kabsch.mean(0), level, dt_fs),
        "decorrelation_time_fs_per_trajectory": [_first_reaching(row, level, dt_fs) for row in kabsch],
    }


def deviation(predicted: np.ndarray, continuation: np.ndarray | None, reference: np.ndarray, dt_fs: float) -> dict:
    """RMS deviation over time of a feature, predicted (B, F, K), against continuation (B, F_c, K) and against the
    reference mean (reference (F_ref, K)), with the reference's own RMS fluctuation about its mean."""
    mean = reference.mean(0)
    times, against_mean = binned(((predicted - mean) ** 2).mean(-1), dt_fs)
    result = {
        "reference_fluctuation": float(np.sqrt(((reference - mean) ** 2).mean())),
        "vs_reference_mean": {"time_fs": times, "rms": [None if v is None else math.sqrt(v) for v in against_mean]},
        "vs_continuation": None,
    }
    if continuation is not None:
        times, against_true = binned(((predicted[:, : continuation.shape[1]] - continuation) ** 2).mean(-1), dt_fs)
        result["vs_continuation"] = {
            "time_fs": times,
            "rms": [None if v is None else math.sqrt(v) for v in against_true],
        }
    return result
