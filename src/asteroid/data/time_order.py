"""Is a trajectory a time series? Consecutive MD frames lie close together; random frames do not.

The check compares the mean displacement between consecutive frames with the mean displacement
between random pairs of frames. For frames in time order the ratio is small; for shuffled frames
(e.g. rMD17, which samples frames at random) consecutive frames are random pairs and the ratio is ~1.
A time series can still break at one frame (an atom wrapped into the box, two runs concatenated):
`largest_jump` finds the step whose fastest atom moves furthest against the typical step.
"""

from __future__ import annotations

import numpy as np

# Below this many frames the ratio is dominated by chance: the verdict is "unknown" (None).
# For ballistic motion (short MD stretches) the displacement grows linearly with the lag, and the
# mean lag of a random pair is (T + 1) / 3 frames, so an ordered trajectory has a ratio of about
# 3 / (T + 1): 0.27 at T = 10, safely under the threshold.
MIN_FRAMES = 10
# Measured on GFN2-xTB NVE MD of ethanol at 0.5 fs: 0.08 over 2000 frames, 0.28-0.32 over 10-frame
# stretches; the same stretches shuffled: 0.59-1.1 (T = 10-50, 300 shuffles each). 0.5 sits between.
THRESHOLD = 0.5
# Pairs and atoms are subsampled so that the check costs milliseconds even on 10^6 frames of 10^5 atoms.
MAX_PAIRS = 2000
MAX_ATOMS = 256
# A step is a jump when its fastest atom moves more than JUMP_FACTOR times the median over steps of the fastest
# atom's move, and more than JUMP_MIN Angstrom (ethanol at 0.5 fs: the largest step is 2.3x the median).
JUMP_FACTOR = 20.0
JUMP_MIN = 1.0


class TimeOrderWarning(UserWarning):
    """The frames of a trajectory look shuffled: forecasting needs consecutive MD frames."""


def rms_displacement(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Root-mean-square over atoms of the displacement between paired frames: (K, N, 3), (K, N, 3) -> (K,)."""
    d = np.asarray(A, dtype=np.float64) - np.asarray(B, dtype=np.float64)  # (K, N, 3)
    return np.sqrt((d * d).sum(-1).mean(-1))


def mean_step_displacement(R: np.ndarray, chunk: int = 4096) -> float:
    """Mean over all consecutive frame pairs of the RMS per-atom displacement (Angstrom); nan for T < 2."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    total = 0.0
    for start in range(0, T - 1, chunk):  # chunks keep memory flat on long memory-mapped trajectories
        stop = min(start + chunk, T - 1)
        total += rms_displacement(R[start + 1 : stop + 1], R[start:stop]).sum()
    return total / (T - 1)


def time_order_ratio(R: np.ndarray, rng: int | np.random.Generator = 0) -> float:
    """Mean displacement of consecutive frames over that of random frame pairs, R: (T, N, 3).

    Small (<< 1) for a time-ordered trajectory, about 1 for shuffled frames. nan when there are
    fewer than MIN_FRAMES frames or the frames do not move at all.
    """
    T, N = R.shape[:2]
    if T < MIN_FRAMES:
        return float("nan")
    gen = np.random.default_rng(rng)
    atoms = np.sort(gen.choice(N, MAX_ATOMS, replace=False)) if N > MAX_ATOMS else np.arange(N)
    first = np.sort(gen.choice(T - 1, min(T - 1, MAX_PAIRS), replace=False))
    consecutive = rms_displacement(R[np.ix_(first, atoms)], R[np.ix_(first + 1, atoms)]).mean()
    i = gen.integers(0, T, MAX_PAIRS)
    j = (i + gen.integers(1, T, MAX_PAIRS)) % T  # any frame but i
    random = rms_displacement(R[np.ix_(i, atoms)], R[np.ix_(j, atoms)]).mean()
    if random == 0:
        return float("nan")
    return float(consecutive / random)


def time_order_verdict(ratio: float) -> bool | None:
    """True: time-ordered; False: looks shuffled; None: cannot tell (too few frames, or no motion)."""
    if np.isnan(ratio):
        return None
    return bool(ratio < THRESHOLD)


def is_time_ordered(R: np.ndarray, rng: int | np.random.Generator = 0) -> bool | None:
    """Verdict of the time-order check on frames R: (T, N, 3); None when it cannot tell."""
    return time_order_verdict(time_order_ratio(R, rng))


def largest_jump(R: np.ndarray, chunk: int = 4096) -> dict | None:
    """The step of R (T, N, 3) whose fastest atom moves furthest, when it is a jump (see JUMP_FACTOR):
    {"frame": the frame before it, "atom", "distance" Angstrom, "typical": the median fastest move}; else None."""
    T = R.shape[0]
    if T < 3:
        return None
    fastest = np.empty(T - 1)
    which = np.empty(T - 1, dtype=np.int64)
    for start in range(0, T - 1, chunk):
        stop = min(start + chunk, T - 1)
        moves = np.linalg.norm(
            np.asarray(R[start + 1 : stop + 1], np.float64) - np.asarray(R[start:stop], np.float64), axis=-1
        )  # (K, N)
        fastest[start:stop], which[start:stop] = moves.max(-1), moves.argmax(-1)
    step = int(fastest.argmax())
    typical = float(np.median(fastest))
    if fastest[step] <= max(JUMP_FACTOR * typical, JUMP_MIN):
        return None
    return {"frame": step, "atom": int(which[step]), "distance": float(fastest[step]), "typical": typical}
