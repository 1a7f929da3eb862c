"""Sliding-window samples of one or several trajectories, for the Lightning Trainer.

Each trajectory is stored once, as a memory-mapped float32 `.npy` cache; a sample is an index view
(trajectory, start frame) that gathers its H + P frames only when asked for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from asteroid.data.cache import box_file, cache_problem, read_record, write_cache
from asteroid.data.dataset import EpochShuffle, WindowDataset, collate_windows
from asteroid.data.md17 import DATASETS, resolve_dataset
from asteroid.data.mdanalysis import PROTEIN_DATASETS, fetch_protein_dataset
from asteroid.data.readers import load_trajectory
from asteroid.data.signature import CachedTrajectory, DataSignature, check_signature, content_digest, formula
from asteroid.data.sources import TrajectorySource, generate, generated, with_dataset_topology
from asteroid.data.windows import (
    PROTOCOLS,
    SPLITS,
    WindowLayout,
    chronological_starts,
    eqmotion_blocks,
    peer_random_starts,
)
from asteroid.errors import ConfigError, DataError
from asteroid.fileio import writable_output

DEFAULT_LAYOUT = dict(history=8, horizon=8, spacing=10)
CACHE_VERSION = 2  # part of every cache file's name: raise it when what the cache holds changes (2: periodic cells)


class TrajectoryDataModule(pl.LightningDataModule):
    """Chronological (or peer-protocol) windows of one or several trajectories.

    history / horizon / spacing: frames in, frames out, MD frames between them (default 8 / 8 / 10); a named
    `protocol` other than "default" (a peer's, see `asteroid.data.windows.PROTOCOLS`) fixes them, its splits and its
    window stride, and must not be combined with them. stride: MD frames between window starts (default 1).
    heavy_atoms: keep only non-hydrogen atoms (default: the protocol's choice). seed: the chronological and EqMotion
    splits' subsampling; the GMN/EGNO/ESTAG splits use the peers' own fixed seed.
    """

    def __init__(
        self,
        sources: list[TrajectorySource],
        protocol: str = "default",
        history: int | None = None,
        horizon: int | None = None,
        spacing: int | None = None,
        stride: int | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        heavy_atoms: bool | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str = "data/cache",
        seed: int = 0,
    ):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        if not sources:
            raise ConfigError("data.sources is empty: give at least one trajectory")
        self.protocol = PROTOCOLS[protocol]
        given = {k: v for k, v in dict(history=history, horizon=horizon, spacing=spacing).items() if v is not None}
        fixed = [*given, *(["stride"] if stride is not None else [])]
        if self.protocol.layout is not None and fixed:
            raise ConfigError(
                f"protocol {protocol!r} fixes the window layout; remove {', '.join(fixed)} "
                f"(data.{fixed[0]}) or use protocol 'default'"
            )
        self.layout = self.protocol.layout or WindowLayout.regular(**{**DEFAULT_LAYOUT, **given})
        stride = self.protocol.stride or (1 if stride is None else stride)
        if stride < 1:
            raise ConfigError(f"data.stride must be >= 1, got {stride}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.sources = [with_dataset_topology(TrajectorySource(**s) if isinstance(s, dict) else s) for s in sources]
        self.stride, self.split_fractions, self.seed = stride, tuple(split_fractions), seed
        self.heavy_atoms = self.protocol.heavy_atoms if heavy_atoms is None else heavy_atoms
        self.batch_size, self.num_workers, self.cache_dir = batch_size, num_workers, Path(cache_dir)
        self.datasets: dict[str, WindowDataset] = {}
        self._train_sampler: EpochShuffle | None = None
        self._resume_position = (None, 0)
        self.trajectories: list[CachedTrajectory] = []
        self.displacement_scale: torch.Tensor | None = None

    @property
    def history(self) -> int:
        return self.layout.history

    @property
    def horizon(self) -> int:
        return self.layout.horizon

    # ---- files -------------------------------------------------------------------------------------------------
    @staticmethod
    def _file(source: TrajectorySource) -> Path:
        """Where the source's trajectory is, fetching a known dataset that is missing (rank 0, in prepare_data)."""
        path = Path(source.path)
        if path.exists() or generated(source):
            return path
        if source.path.lower() in PROTEIN_DATASETS:
            return fetch_protein_dataset(source.path, root="data")[0]
        if source.path.lower() not in DATASETS:
            raise DataError(
                f"{path}: file not found (set `molecule` or `structure` in the source to generate it, or name a known "
                f"dataset such as md17:ethanol)"
            )
        return resolve_dataset(source.path, root="data")

    def _cache_paths(self, source: TrajectorySource) -> tuple[Path, Path]:
        path = self._file(source)
        stat = path.stat()
        key = json.dumps(
            [
                CACHE_VERSION,
                str(path.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                source.topology,
                source.selection,
                source.dt_fs,
                source.periodic,
                self.heavy_atoms,
            ]
        )
        stem = f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        return self.cache_dir / f"{stem}.npy", self.cache_dir / f"{stem}.json"

    def prepare_data(self) -> None:
        """Generate missing built-in trajectories, then cache every trajectory as float32 `.npy` (rank 0 only)."""
        try:
            writable_output(self.cache_dir, "folder")
        except ConfigError as error:
            raise ConfigError(f"data.cache_dir {error}") from None
        for source in self.sources:
            path = self._file(source)
            if not path.exists():
                from asteroid.simulation.md import run_summary

                print(run_summary(generate(source)))
            coords_file, meta_file = self._cache_paths(source)
            if meta_file.exists():
                problem = cache_problem(coords_file, read_record(meta_file))
                if problem is None:
                    continue
                print(f"{coords_file}: {problem}; rebuilding it from {path}")
            traj = load_trajectory(path, topology=source.topology, selection=source.selection, dt_fs=source.dt_fs)
            if self.heavy_atoms:
                traj = traj.select_atoms(np.flatnonzero(traj.z > 1))
            write_cache(traj, coords_file, meta_file, periodic=source.periodic and traj.box is not None, source=path)

    # ---- windows -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        coordinate_files, box_files, numbers, self.trajectories = [], [], [], []
        index = {name: [] for name in SPLITS}
        span = self.layout.span
        gap = span if self.protocol.gap is None else self.protocol.gap
        for i, source in enumerate(self.sources):
            coords_file, meta_file = self._cache_paths(source)
            meta = read_record(meta_file)
            if meta is None:
                raise DataError(f"{meta_file}: the cache record is unreadable; delete it and run again to rebuild it")
            coordinates = np.load(coords_file, mmap_mode="r")
            n_frames = coordinates.shape[0]
            recipe = self.protocol
            if recipe.split == "chronological":
                starts = chronological_starts(n_frames, span, self.stride, self.split_fractions, gap, source.path)
            elif recipe.split == "peer_random":
                starts = peer_random_starts(n_frames, span, recipe.fractions, recipe.max_windows, source.path)
            else:
                starts = eqmotion_blocks(
                    n_frames, self.layout, self.stride, recipe.fractions, recipe.max_windows, self.seed + i, source.path
                )
            for name in SPLITS:
                index[name].append(np.stack([np.full(len(starts[name]), i), starts[name]], axis=1))
            coordinate_files.append(coords_file)
            box_files.append(box_file(coords_file) if meta["periodic"] else None)
            numbers.append(np.asarray(meta["z"], dtype=np.int64))
            self.trajectories.append(
                CachedTrajectory(
                    meta["z"],
                    meta["dt_fs"],
                    meta["name"],
                    meta["source"],
                    meta["periodic"],
                    n_frames,
                    starts,
                    content_digest(coordinates),
                )
            )
        periodic = [t.source for t in self.trajectories if t.periodic]
        if periodic and len(periodic) < len(self.trajectories):
            raise ConfigError(
                f"data.sources mixes periodic trajectories ({', '.join(periodic)}) with open ones; "
                "a batch needs one or the other (set periodic: false on a source to ignore its box)"
            )
        self.datasets = {
            name: WindowDataset(coordinate_files, numbers, np.concatenate(index[name]), self.layout, box_files)
            for name in SPLITS
        }
        self.displacement_scale = self._fit_displacement_scale()

    def describe(self) -> str:
        """What the windows are, in a few lines: each trajectory's frames and frame step, the frames in and out and
        the time between them, the windows per split; a note where the time between frames is far from what
        ASTEROID's defaults were tuned for (5 fs)."""
        trajectories = self.trajectories
        lines = [
            f"data: {t.source}: {t.n_frames} frames of {len(t.z)} atoms ({formula(t.z)}), {t.dt_fs:g} fs apart"
            for t in trajectories
        ]
        if len(lines) > 4:  # many molecules: one line for all
            atoms, frames = [len(t.z) for t in trajectories], [t.n_frames for t in trajectories]
            lines = [
                f"data: {len(trajectories)} trajectories of {min(atoms)}-{max(atoms)} atoms, {min(frames)}-"
                f"{max(frames)} frames, {'/'.join(f'{dt:g}' for dt in sorted({t.dt_fs for t in trajectories}))} "
                "fs apart"
            ]
        offsets = self.layout.history_offsets + self.layout.target_offsets
        steps = sorted({b - a for a, b in zip(offsets, offsets[1:])})
        frame_fs = sorted({step * t.dt_fs for step in steps for t in self.trajectories})
        counts = " / ".join(f"{len(self.datasets[name])} {name}" for name in SPLITS)
        lines.append(
            f"windows: {self.history} frames in, {self.horizon} out, {'/'.join(map(str, steps))} data frames apart "
            f"(data.spacing; {', '.join(f'{fs:g}' for fs in frame_fs)} fs); {counts}"
        )
        if max(frame_fs) > 4 * 5.0 or min(frame_fs) < 5.0 / 4:
            lines.append(
                f"note: the model's frames are {', '.join(f'{fs:g}' for fs in frame_fs)} fs apart; its defaults "
                "were tuned for 5 fs (MD at 0.5 fs with data.spacing 10): set data.spacing for your data's frame step"
            )
        return "\n".join(lines)

    def _fit_displacement_scale(self, max_windows: int = 4096) -> torch.Tensor:
        """(P,) RMS displacement per Cartesian component from the last history frame, on training windows only."""
        train = self.datasets["train"]
        picks = np.random.default_rng(self.seed).permutation(len(train))[:max_windows]
        squares = torch.zeros(self.horizon, dtype=torch.float64)
        for i in picks:
            window = train[i]
            squares += ((window["target"] - window["history"][-1]).double() ** 2).mean(dim=(1, 2))
        return (squares / len(picks)).sqrt().float().clamp_min(1e-6)

    def training_frames(self, max_frames: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
        """z (N,) and up to max_frames frames (T, N, 3) Angstrom spread evenly over the frames the training windows
        cover: what may be learned from the data, never a validation or test frame. One molecule only."""
        molecules = {tuple(t.z) for t in self.trajectories}
        if len(molecules) != 1:
            raise ConfigError(
                f"data.sources holds {len(molecules)} molecules ({', '.join(formula(z) for z in molecules)}), but "
                "model.bond_constraints fits its bond table to one: train one molecule per run, or set "
                "model.transferable_bonds true (as experiments/pretrain.yaml does)"
            )
        train = self.datasets["train"]
        per_trajectory = max(1, max_frames // len(self.trajectories))
        frames = []
        for coords_file, t in zip(train.coordinate_files, self.trajectories):
            covered = np.unique((t.starts["train"][:, None] + train.offsets[None]).ravel())
            picks = covered[np.linspace(0, len(covered) - 1, min(per_trajectory, len(covered))).round().astype(int)]
            frames.append(np.load(coords_file, mmap_mode="r")[picks])
        return np.asarray(self.trajectories[0].z), np.concatenate(frames)

    def frames(self, trajectory: int = 0) -> np.ndarray:
        """(T, N, 3) Angstrom, every frame of one trajectory as the windows see it (memory-mapped, read-only)."""
        return np.load(self._cache_paths(self.sources[trajectory])[0], mmap_mode="r")

    @property
    def lead_times_fs(self) -> np.ndarray:
        """(P,) time of each target frame after the last history frame, femtoseconds (first trajectory's dt)."""
        return self.layout.lead_frames() * self.trajectories[0].dt_fs

    def signature(self) -> DataSignature:
        """What a model trained on this data depends on (`data.signature`): saved in every checkpoint and checked
        when the checkpoint meets data again."""
        return DataSignature.of(self.layout, self.heavy_atoms, self.trajectories)

    def check_signature(self, recorded: DataSignature | None, checkpoint: str) -> None:
        """Refuse data other than what `checkpoint` was trained on (None: a checkpoint older than the record)."""
        check_signature(recorded, self.signature(), self.trajectories, checkpoint)

    def _loader(self, split: str, shuffle: bool, sampler=None) -> DataLoader:
        # Its own generator: each iterator draws a seed for its workers, which from the global random state would
        # put a draw between training steps that a resumed run does not repeat (see EpochShuffle).
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_windows,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(torch.initial_seed()),
        )

    def train_dataloader(self) -> DataLoader:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return self._loader("train", shuffle=True)  # Lightning's DistributedSampler: an order per epoch and rank
        if self._train_sampler is None:
            self._train_sampler = EpochShuffle(len(self.datasets["train"]), torch.initial_seed())
            self._train_sampler.resume_at(*self._resume_position)
        return self._loader("train", shuffle=False, sampler=self._train_sampler)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Go on in mid-epoch after `batches` training batches of `epoch` (a resumed run; see EpochShuffle)."""
        self._resume_position = (epoch, batches * self.batch_size)
        if self._train_sampler is not None:
            self._train_sampler.resume_at(*self._resume_position)

    def _evaluation_loader(self, split: str) -> DataLoader:
        # On several devices every window is scored once: Lightning's own sampler would repeat some windows so that
        # all devices get as many batches, which weights them twice in the validation score and the test table.
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(self.datasets[split], shuffle=False)
        return self._loader(split, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
