"""Windows of memory-mapped trajectories: one window, a batch of them, and the order they are trained in."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from asteroid.data.windows import WindowLayout


class Window(TypedDict, total=False):
    """The keys of one window, and of a batch of them (collate_windows adds the leading B axis), named once."""

    history: torch.Tensor  # (H, N, 3) Angstrom
    target: torch.Tensor  # (P, N, 3) Angstrom
    z: torch.Tensor  # (N,) int64 atomic numbers, 0 on padding
    mask: torch.Tensor  # (N,) bool, False on padding
    box: torch.Tensor  # (3, 3) cell vectors of the last history frame, rows, Angstrom; periodic windows only


class WindowDataset(Dataset):
    """Windows (trajectory, start) over memory-mapped coordinate caches; nothing is copied up front."""

    def __init__(
        self,
        coordinate_files: list[Path],
        numbers: list[np.ndarray],
        index: np.ndarray,
        layout: WindowLayout,
        box_files: list[Path | None] | None = None,
    ):
        self.coordinate_files, self.numbers, self.index, self.layout = coordinate_files, numbers, index, layout
        self.box_files = box_files or [None] * len(coordinate_files)
        self.offsets = np.asarray(layout.history_offsets + layout.target_offsets)
        self._coordinates = self._boxes = None  # opened lazily so that worker processes open their own maps

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        return {**self.__dict__, "_coordinates": None, "_boxes": None}

    def __getitem__(self, i: int) -> Window:
        if self._coordinates is None:
            self._coordinates = [np.load(f, mmap_mode="r") for f in self.coordinate_files]
            self._boxes = [None if f is None else np.load(f, mmap_mode="r") for f in self.box_files]
        traj, start = self.index[i]
        frames = torch.from_numpy(np.ascontiguousarray(self._coordinates[traj][start + self.offsets]))  # (H+P, N, 3)
        z = torch.from_numpy(self.numbers[traj])
        H = self.layout.history
        window = Window(history=frames[:H], target=frames[H:], z=z, mask=torch.ones(len(z), dtype=torch.bool))
        if self._boxes[traj] is not None:  # the cell of the last history frame, (3, 3)
            window["box"] = torch.from_numpy(np.array(self._boxes[traj][start + self.offsets[H - 1]]))
        return window


ATOM_AXIS = {"history": 1, "target": 1, "z": 0, "mask": 0}  # the axis over atoms of each per-atom window entry


def collate_windows(samples: list[Window]) -> Window:
    """Stack windows, padding molecules of different sizes to the largest (mask False, z 0 on padding)."""
    n_max = max(len(s["z"]) for s in samples)
    batch = Window()
    for key in samples[0]:
        tensors = []
        for s in samples:
            pad = n_max - len(s["z"])
            t = s[key]
            if pad and key in ATOM_AXIS:
                atom_dim = ATOM_AXIS[key]
                shape = list(t.shape)
                shape[atom_dim] = pad
                t = torch.cat([t, t.new_zeros(shape)], dim=atom_dim)
            tensors.append(t)
        batch[key] = torch.stack(tensors)
    return batch


class EpochShuffle(Sampler[int]):
    """A fresh order of the training windows each epoch, drawn from (seed, epoch) alone.

    torch's own shuffling draws each epoch's order from the global random state at the epoch's start, which a run
    resumed mid-epoch no longer has: it would train on another order. Here the order is a function of the epoch
    (Lightning calls `set_epoch`), and `resume_at` skips the windows of that epoch already trained on, so a
    resumed run trains on the same batches as an uninterrupted one.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0
        self._skip = (None, 0)  # (epoch, windows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, windows: int) -> None:
        self._skip = (epoch, windows)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        skip_epoch, skip = self._skip
        if skip_epoch == self.epoch:
            order, self._skip = order[skip:], (None, 0)
        return iter(order.tolist())
