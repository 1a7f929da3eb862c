"""Where the windows of a trajectory start, and how they are split into train / val / test.

A window is `H` history frames followed by `P` target frames, given as frame offsets from the window's start.
Our default protocol takes frames `spacing` apart and splits the trajectory into chronological blocks with a gap
of one window between blocks, so that no frame of one split is an input or target of another. The peers' MD17
protocols are presets written from their official loaders' code (GMN, EGNO and ESTAG `md17/dataset.py`, EqMotion
`md17/preprocess.py`) and pinned by tests against a line-by-line transcription of it; three of them draw start
frames at random from one stretch of trajectory, so their test windows overlap training windows in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asteroid.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WindowLayout:
    """Frame offsets, from the window's first frame, of the history and target frames."""

    history_offsets: tuple[int, ...]
    target_offsets: tuple[int, ...]

    @classmethod
    def regular(cls, history: int, horizon: int, spacing: int) -> "WindowLayout":
        if history < 1 or horizon < 1 or spacing < 1:
            raise ConfigError(f"history, horizon and spacing must be >= 1, got {history}, {horizon}, {spacing}")
        return cls(
            tuple(range(0, history * spacing, spacing)),
            tuple(range(history * spacing, (history + horizon) * spacing, spacing)),
        )

    @property
    def history(self) -> int:
        return len(self.history_offsets)

    @property
    def horizon(self) -> int:
        return len(self.target_offsets)

    @property
    def span(self) -> int:
        """Frames from the first history frame to the last target frame, both included."""
        return self.target_offsets[-1] + 1

    def lead_frames(self) -> np.ndarray:
        """(P,) frames between the last history frame and each target frame."""
        return np.asarray(self.target_offsets) - self.history_offsets[-1]


@dataclass(frozen=True)
class Protocol:
    """A named recipe: window layout, how the splits are drawn, which atoms are kept and which frames are scored.

    split: "chronological" (ours), "peer_random" (the MD17 loaders of GMN, EGNO and ESTAG) or "eqmotion_blocks"
    (EqMotion's md17/preprocess.py); see the functions of the same names below.
    fractions: chronological and EqMotion block sizes, or the shares of the trimmed trajectory the peers draw.
    max_windows: the peers keep at most this many windows of each split (their `max_samples`); 0 = no limit.
    stride: frames between window starts fixed by the protocol (EqMotion's 20); None = `data.stride`.
    """

    layout: WindowLayout | None  # None: built from the user's history / horizon / spacing
    split: str
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_windows: tuple[int, int, int] = (0, 0, 0)
    stride: int | None = None
    gap: int | None = None  # chronological: frames between blocks; None = one window
    heavy_atoms: bool = False
    description: str = ""
    scored: str = "every target frame (per-step MSE and their mean)"
    overlap: str = ""  # how test windows relate to training windows in time


PEER_OVERLAP = (
    "test windows are drawn at random from the same stretch of trajectory as the training windows, so "
    "they overlap training windows in time, as in the peers' papers: not leak-free, only comparable with "
    "the peers' published numbers (our default protocol is the leak-free one)"
)
PEER_DRAW = "starts drawn as the official loader draws them (x[:-1], x[10000:-10000], np.random.seed(100), 10/5/5%)"
PROTOCOLS = {
    "default": Protocol(
        None,
        "chronological",
        description="ours: chronological 80/10/10 blocks, one-window gaps",
        overlap="no frame of a test window is in, or within one window of, any training window: leak-free",
    ),
    "gmn": Protocol(
        WindowLayout((0, 1), (3000,)),
        "peer_random",
        fractions=(0.1, 0.05, 0.05),
        max_windows=(500, 2000, 2000),
        heavy_atoms=True,
        overlap=PEER_OVERLAP,
        description=f"GMN (hanjq17/GMN md17/dataset.py): heavy atoms; x_t and v_t = x_t+1 - x_t -> "
        f"x_t+3000; {PEER_DRAW}; 500/2000/2000 windows at most",
        scored="the one target frame",
    ),
    "egno": Protocol(
        WindowLayout((0, 1), tuple(375 * i for i in range(1, 9))),
        "peer_random",
        fractions=(0.1, 0.05, 0.05),
        max_windows=(500, 2000, 2000),
        heavy_atoms=True,
        overlap=PEER_OVERLAP,
        description=f"EGNO (MinkaiXu/EGNO md17/dataset.py, MD17DynamicsDataset): heavy atoms; x_t and "
        f"v_t = x_t+1 - x_t -> x_t+375i, i = 1..8; {PEER_DRAW}; 500/2000/2000 windows at most",
        scored="EGNO reports the last frame (S2S: the step-8 column) and trains on the mean over its 8 "
        "(S2T: the mean column)",
    ),
    "estag": Protocol(
        WindowLayout(tuple(range(0, 100, 10)), (100,)),
        "peer_random",
        fractions=(0.1, 0.05, 0.05),
        max_windows=(500, 2000, 2000),
        heavy_atoms=True,
        overlap=PEER_OVERLAP,
        description=f"ESTAG (GLAD-RUC/ESTAG md17/dataset.py): heavy atoms; x_t, x_t+10, ..., x_t+90 -> "
        f"x_t+100 (positions only); {PEER_DRAW}; 500/2000/2000 windows at most",
        scored="the one target frame",
    ),
    "eqmotion": Protocol(
        WindowLayout.regular(10, 10, 20),
        "eqmotion_blocks",
        fractions=(5, 1, 2),
        max_windows=(5000, 2000, 2000),
        stride=20,
        heavy_atoms=True,
        overlap="chronological 5:1:2 blocks with no gap: splits share no frame but adjacent blocks "
        "touch, so the first test windows follow the last validation frames directly",
        description="EqMotion (MediaBrain-SJTU/EqMotion md17/preprocess.py): heavy atoms; 10 frames "
        "20 apart -> the next 10; x[:-1] cut into 5:1:2 blocks, a window every 20 frames, "
        "int((block - 400) / 20) windows per block; 5000/2000/2000 windows at most",
        scored="every target frame; EqMotion reports ADE (mean over its 10) and FDE (the last)",
    ),
}


def count_windows(n_frames: int, span: int, stride: int) -> int:
    """Windows of `span` frames, one every `stride` frames, that fit in `n_frames` frames."""
    return max(0, (n_frames - span) // stride + 1)


def chronological_starts(n_frames: int, span: int, stride: int, fractions, gap: int, source: str = "trajectory"):
    """Start frames of each split: consecutive blocks [train][gap][val][gap][test].

    Every window lies entirely inside its block, so splits share no frame; the gap keeps them further apart in time.
    """
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != 3 or (fractions <= 0).any():
        raise ConfigError(f"split fractions must be three positive numbers, got {tuple(fractions)}")
    usable = n_frames - 2 * gap
    lengths = np.floor(usable * fractions / fractions.sum()).astype(int) if usable > 0 else np.zeros(3, int)
    if (lengths < span).any():
        need = int(np.ceil(span * fractions.sum() / fractions.min())) + 2 * gap
        raise DataError(
            f"{source}: trajectory too short: {n_frames} frames, but one window spans {span} frames and the "
            f"{'/'.join(f'{f:g}' for f in fractions)} split with gaps of {gap} needs at least {need} frames "
            "(a window spans (data.history + data.horizon - 1) x data.spacing + 1 frames: lower those, or give a "
            "longer trajectory)"
        )
    starts, block_start = {}, 0
    for name, length in zip(SPLITS, lengths):
        starts[name] = block_start + stride * np.arange(count_windows(length, span, stride))
        block_start += length + gap
    return starts


PEER_SEED = 100  # np.random.seed(100) in the peers' loaders, whatever the training seed
PEER_MARGIN = 10000  # frames the peers leave out at each end: x[10000:-10000]


def peer_random_starts(n_frames: int, span: int, fractions, max_windows, source: str = "trajectory"):
    """Start frames of each split as the MD17 loaders of GMN, EGNO and ESTAG draw them.

    Their code: drop the last frame (x = x[:-1]), keep x[10000:-10000], seed NumPy's global generator with 100,
    draw int(0.1 L) train starts, then int(0.05 L) val and test starts from those not yet taken, each with
    np.random.choice(..., replace=False), shift by 10000, and keep the first `max_samples` of each draw. The same
    seed for every training seed: the peers' split does not change with theirs.
    """
    usable = n_frames - 1 - 2 * PEER_MARGIN
    sizes = [int(f * usable) for f in fractions] if usable > 0 else [0, 0, 0]
    if min(sizes) < 1:
        raise DataError(
            f"{source}: trajectory too short for this protocol: {n_frames} frames leave "
            f"{max(usable, 0)} start frames after dropping the last frame and {PEER_MARGIN} at each end, "
            f"too few to draw {'/'.join(f'{f:g}' for f in fractions)} of them"
        )
    if span > PEER_MARGIN:
        raise ConfigError(f"a window of {span} frames does not fit in the {PEER_MARGIN} frames the peers leave out")
    rng = np.random.RandomState(PEER_SEED)
    taken = np.zeros(usable, dtype=bool)
    starts = {}
    for name, size, limit in zip(SPLITS, sizes, max_windows):
        drawn = rng.choice(np.flatnonzero(~taken), size=size, replace=False)
        taken[drawn] = True
        starts[name] = np.sort(drawn[:limit] if limit else drawn) + PEER_MARGIN
    return starts


def eqmotion_blocks(
    n_frames: int, layout: WindowLayout, stride: int, proportions, max_windows, seed: int, source: str = "trajectory"
):
    """Start frames of each split as EqMotion's md17/preprocess.py cuts them.

    Its code: drop the last frame, cut the rest into consecutive blocks of int(T * p / 8) frames for p = 5, 1, 2,
    and start int((block - 400) / 20) windows in each, 20 frames apart (400 = 20 frames x 20 frames apart).
    It then shuffles each split without a seed and keeps the first 5000 / 2000 / 2000; where a split has more,
    we keep that many chosen with `seed`.
    """
    usable = n_frames - 1
    total = sum(proportions)
    lengths = [int(usable * p / total) for p in proportions]
    reserved = (layout.history + layout.horizon) * (layout.target_offsets[0] - layout.history_offsets[-1])
    counts = [max(0, int((length - reserved) / stride)) for length in lengths]
    if min(counts) < 1:
        raise DataError(
            f"{source}: trajectory too short for this protocol: {n_frames} frames give "
            f"{'/'.join(map(str, counts))} train/val/test windows (each block needs over {reserved} "
            "frames)"
        )
    rng = np.random.default_rng(seed)
    starts, block_start = {}, 0
    for name, length, count, limit in zip(SPLITS, lengths, counts, max_windows):
        split = block_start + stride * np.arange(count)
        starts[name] = np.sort(rng.choice(split, size=limit, replace=False)) if limit and count > limit else split
        block_start += length
    return starts


def rollout_spacing(layout: WindowLayout) -> int:
    """Frames between consecutive predicted frames; refuses layouts whose forecasts cannot become history.

    A rollout needs history and targets on one regular grid: frames 0, s, ..., (H-1)s in, Hs, ..., (H+P-1)s out.
    """
    offsets = layout.history_offsets + layout.target_offsets
    spacing = offsets[1] - offsets[0] if len(offsets) > 1 else 1
    if offsets[0] != 0 or any(b - a != spacing for a, b in zip(offsets, offsets[1:])):
        raise ConfigError(
            f"cannot roll out this window layout (history offsets {layout.history_offsets}, target "
            f"offsets {layout.target_offsets}): history and targets must be evenly spaced, as in "
            "the default protocol"
        )
    return spacing
