"""Where the windows of a trajectory start, and how they are split into train / val / test.

A window is `H` history frames followed by `P` target frames, given as frame offsets from the window's start.
Our default protocol takes frames `spacing` apart and splits the trajectory into chronological blocks with a gap
of one window between blocks, so that no frame of one split is an input or target of another. The peers' MD17
protocols are reproduced as presets for comparison; three of them draw start frames at random from one stretch of
trajectory, so their test windows overlap training windows in time (see DESIGN.md section 2).
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
        return cls(tuple(range(0, history * spacing, spacing)),
                   tuple(range(history * spacing, (history + horizon) * spacing, spacing)))

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
    """A named recipe: window layout, how splits are drawn, and whether only heavy atoms are used."""

    layout: WindowLayout | None  # None: built from the user's history / horizon / spacing
    split: str  # "chronological" or "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # chronological block sizes
    counts: tuple[int, int, int] = (0, 0, 0)  # random: start frames per split
    margin: int = 0  # random: frames excluded at both ends of the trajectory
    gap: int | None = None  # chronological: frames between blocks; None = one window
    heavy_atoms: bool = False
    description: str = ""


PROTOCOLS = {
    "default": Protocol(None, "chronological", description="ours: chronological 80/10/10 blocks, one-window gaps"),
    "gmn": Protocol(WindowLayout((0, 1), (3000,)), "random", counts=(500, 2000, 2000), margin=10000,
                    heavy_atoms=True, description="GMN: x_t, x_t+1 -> x_t+3000; random starts in x[10000:-10000]"),
    "egno": Protocol(WindowLayout((0, 1), tuple(375 * i for i in range(1, 9))), "random", counts=(500, 2000, 2000),
                     margin=10000, heavy_atoms=True,
                     description="EGNO: x_t, x_t+1 -> x_t+375i, i=1..8; random starts in x[10000:-10000]"),
    "estag": Protocol(WindowLayout(tuple(range(0, 100, 10)), (100,)), "random", counts=(500, 2000, 2000),
                      description="ESTAG: 10 frames spaced 10 -> frame +100; random starts"),
    "eqmotion": Protocol(WindowLayout.regular(10, 10, 20), "chronological", fractions=(5 / 8, 1 / 8, 2 / 8), gap=0,
                         description="EqMotion: 10 frames gap 20 -> next 10; chronological 5:1:2, no gap"),
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
            f"{'/'.join(f'{f:g}' for f in fractions)} split with gaps of {gap} needs at least {need} frames")
    starts, block_start = {}, 0
    for name, length in zip(SPLITS, lengths):
        starts[name] = block_start + stride * np.arange(count_windows(length, span, stride))
        block_start += length + gap
    return starts


def random_starts(n_frames: int, span: int, counts, margin: int, seed: int, source: str = "trajectory"):
    """Start frames drawn without replacement from [margin, n_frames - margin - span], as the peers do."""
    low, high = margin, n_frames - margin - span + 1
    if high - low < sum(counts):
        raise DataError(
            f"{source}: trajectory too short for this protocol: {n_frames} frames leave {max(high - low, 0)} start "
            f"frames after excluding {margin} at each end and a window of {span}, but {sum(counts)} are drawn")
    drawn = np.random.default_rng(seed).choice(np.arange(low, high), size=sum(counts), replace=False)
    bounds = np.cumsum((0,) + tuple(counts))
    return {name: np.sort(drawn[bounds[i]:bounds[i + 1]]) for i, name in enumerate(SPLITS)}
