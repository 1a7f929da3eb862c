"""Where a training run writes, so that neither a kill nor a second run at the same time spoils it.

Lightning's layout: `runs/<name>/version_N/` holds one run (TensorBoard events, config.yaml, splits.json,
test_metrics.csv) and its `checkpoints/` (last.ckpt and the best one by validation MSE). Three additions:
- N is claimed with mkdir, which only one process can win: TensorBoardLogger alone gives two runs started
  together under one name the same N;
- a fit resumed from a run's checkpoint goes on in that run's directory; a run locks its directory while it
  writes there (flock, which the system releases when the process dies, SIGKILL included), so a second process
  cannot continue a run that is still going;
- a checkpoint is written to a temporary file beside it and renamed over it: a kill while saving leaves the
  previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import weakref
from pathlib import Path

import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from asteroid.errors import ConfigError
from asteroid.fileio import atomic_output, exclusive_lock, writable_output

ROOT = Path("runs")
LAST = "last.ckpt"
VERSION = re.compile(r"version_(\d+)")


def run_dir(trainer) -> Path | None:
    """The run's log directory, or None without a logger.

    Not `trainer.log_dir`: under DDP that is a broadcast, which hangs when only rank 0 asks.
    """
    log_dir = getattr(trainer.logger, "log_dir", None)
    return Path(log_dir) if log_dir else None


def latest_checkpoint(name: str) -> Path | None:
    """runs/<name>/version_N/checkpoints/last.ckpt of the highest N that has one."""
    found = [
        (int(match[1]), path)
        for path in (ROOT / name).glob(f"version_*/checkpoints/{LAST}")
        if (match := VERSION.fullmatch(path.parent.parent.name))
    ]
    return max(found)[1] if found else None


def checkpoint_version(name: str, ckpt_path: str | os.PathLike) -> int | None:
    """N when `ckpt_path` is a checkpoint of runs/<name>/version_N, otherwise None."""
    checkpoints = Path(ckpt_path).resolve().parent
    match = VERSION.fullmatch(checkpoints.parent.name)
    if checkpoints.name == "checkpoints" and match and checkpoints.parent.parent == (ROOT / name).resolve():
        return int(match[1])
    return None


class RunLogger(TensorBoardLogger):
    """TensorBoard logs in runs/<name>/version_N: N given (a resumed run) or a new one claimed atomically.

    The directory stays locked until `finalize`; Lightning puts the checkpoints in its `checkpoints/`.
    """

    def __init__(self, name: str, version: int | None = None):
        writable_output(ROOT / name, "folder")  # before the data are made and the model built
        super().__init__(str(ROOT), name=name, version=version, default_hp_metric=False)
        self._release = None
        if version is not None:
            self._hold(version)

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0:
            return version  # other DDP ranks use rank 0's directory, which Lightning broadcasts to them
        while True:
            try:
                Path(self.root_dir, f"version_{version}").mkdir(parents=True)
                break
            except FileExistsError:  # another run got there first
                version += 1
        self._hold(version)
        return version

    def _hold(self, version: int) -> None:
        if rank_zero_only.rank != 0:
            return
        directory = Path(self.root_dir, f"version_{version}")
        directory.mkdir(parents=True, exist_ok=True)
        lock = exclusive_lock(directory)
        if lock is None:
            raise ConfigError(
                f"{directory}: another process is still writing this run; wait for it to end or stop it before resuming"
            )
        self._release = weakref.finalize(self, os.close, lock)  # closing the descriptor drops the lock
        # what a killed run was writing when it died: nobody else writes here while we hold the lock
        for partial in directory.glob("checkpoints/.*.tmp"):
            partial.unlink(missing_ok=True)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._logged = True
        super().log_metrics(metrics, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._release is not None:
            self._release()
        # a run that failed before it logged or saved anything (bad data, say) leaves no empty version behind
        if status != "failed" or getattr(self, "_logged", False) or self._version is None:
            return  # (log_dir would claim a version that was never made)
        directory = Path(self.log_dir)
        if directory.is_dir() and not any(directory.glob("checkpoints/*")):
            shutil.rmtree(directory, ignore_errors=True)
            with contextlib.suppress(OSError):  # the run's folder too, if this was its only version
                directory.parent.rmdir()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves each checkpoint to a temporary file in its folder, then renames it over its final name.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in the system's temporary
    folder: where that is another filesystem (a tmpfs /tmp, say) the final move is a copy, and a kill during it
    leaves a truncated checkpoint. A rename within one folder is atomic.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's transaction
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_output(path) as handle:
            self.write(checkpoint, handle)

    def write(self, checkpoint: dict, handle) -> None:
        torch.save(checkpoint, handle)


def run_name(protocol: str, molecule: str, model: str, seed, equal_steps: bool = False, group: str = "compare") -> str:
    return f"{group}/{protocol}{'-equal-steps' if equal_steps else ''}/{molecule}/{model}/seed{seed}"


def newest(name: str, file_name: str) -> Path | None:
    """The newest `file_name` in run `name`'s folder, or None when the run is not here."""
    found = sorted(Path(ROOT, name).glob(f"**/{file_name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
