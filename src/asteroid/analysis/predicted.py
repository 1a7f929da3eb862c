"""A predicted trajectory as `asteroid analyze` reads it, and where it continues its reference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asteroid.data import load_trajectory
from asteroid.data.read_common import stated_number
from asteroid.errors import ConfigError, DataError


@dataclass
class Predicted:
    R: np.ndarray  # (B, F, N, 3) Angstrom, may hold non-finite frames
    z: np.ndarray
    dt_fs: float
    start_frame: np.ndarray | None  # (B,) frame of `source` that is each trajectory's last history frame
    source: str | None


def load_predicted(path: str | Path, dt_fs: float | None = None) -> Predicted:
    """An `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs, optionally start_frame and source), or any
    trajectory file `load_trajectory` reads (a DCD or XTC with the `<name>_topology.pdb` that `asteroid rollout`
    writes beside it). dt_fs, when given, overrides the file's spacing."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        beside = path.with_name(f"{path.stem}_topology.pdb")  # what `asteroid rollout` writes with a DCD or XTC
        topology = beside if path.suffix.lower() in (".dcd", ".xtc") and beside.is_file() else None
        trajectory = load_trajectory(path, topology=topology, dt_fs=dt_fs, check_order=False)
        return Predicted(np.asarray(trajectory.R, np.float64)[None], trajectory.z, trajectory.dt_fs, None, None)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("R", "z", "dt_fs", "start_frame", "source") if key in data.files}
    except Exception as exc:  # zipfile, zlib and numpy all raise their own types on a damaged file
        raise DataError(f"{path}: cannot read the npz file ({' '.join(str(exc).split())})") from exc
    if "R" not in arrays or "z" not in arrays:
        raise DataError(f"{path}: needs keys R (B, F, N, 3) or (F, N, 3) Angstrom and z (N,)")
    try:
        R = np.asarray(arrays["R"], np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: R must hold numbers (Angstrom), got {arrays['R'].dtype} values") from None
    R = R[None] if R.ndim == 3 else R
    if R.ndim != 4 or R.shape[-1] != 3 or R.shape[1] == 0 or R.shape[2] == 0:
        raise DataError(f"{path}: R has shape {arrays['R'].shape}, expected (B, F, N, 3) or (F, N, 3) with frames")
    z = np.asarray(arrays["z"]).reshape(-1)
    if not (np.issubdtype(z.dtype, np.integer) or (np.issubdtype(z.dtype, np.floating) and np.all(z == np.round(z)))):
        raise DataError(f"{path}: z must hold atomic numbers (integers), got {z.dtype} values")
    if len(z) != R.shape[2]:
        raise DataError(f"{path}: z has {len(z)} atoms but R has {R.shape[2]}")
    if dt_fs is None and "dt_fs" not in arrays:
        raise DataError(f"{path}: the file does not say the time between frames; pass --dt-fs")
    dt_fs = stated_number(arrays["dt_fs"], "dt_fs", path) if dt_fs is None else dt_fs
    if not (math.isfinite(dt_fs) and dt_fs > 0):
        raise DataError(f"{path}: the frame spacing must be a positive number of fs, got {dt_fs}")
    start = arrays.get("start_frame")
    return Predicted(
        R,
        z.astype(np.int64),
        dt_fs,
        None if start is None else np.atleast_1d(start).astype(np.int64),
        None if "source" not in arrays else str(arrays["source"]),
    )


def continuation_from(reference, start_frame: np.ndarray, predicted: Predicted, path: Path) -> np.ndarray | None:
    """The reference frames after each start frame (B,) at the predicted spacing: (B, F_c, N, 3), or None when the
    reference ends there."""
    B, F = predicted.R.shape[:2]
    if len(start_frame) != B:
        raise ConfigError(f"{len(start_frame)} start frame(s) for {B} predicted trajectories; give one each")
    stride = predicted.dt_fs / reference.dt_fs
    if abs(stride - round(stride)) > 1e-6 * stride or round(stride) < 1:
        raise DataError(
            f"{path}: predicted frames {predicted.dt_fs:g} fs apart are not a whole number of the "
            f"reference's frames ({reference.dt_fs:g} fs)"
        )
    if start_frame.min() < 0 or start_frame.max() >= reference.n_frames:
        raise ConfigError(f"start frames {start_frame.tolist()} outside the reference's {reference.n_frames} frames")
    stride = round(stride)
    kept = min(F, int((reference.n_frames - 1 - start_frame.max()) // stride))
    if kept < 1:
        return None
    index = start_frame[:, None] + stride * np.arange(1, kept + 1)  # (B, F_c)
    return np.asarray(reference.R, np.float64)[index]
