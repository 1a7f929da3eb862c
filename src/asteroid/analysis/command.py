"""`asteroid analyze`: read a predicted and a reference trajectory, find the continuation, write the report."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asteroid.arguments import CommandParser
from asteroid.analysis.checks import physical_report
from asteroid.analysis.energy import energy_comparison, gfn2_energies
from asteroid.analysis.report import save_report
from asteroid.data import load_trajectory
from asteroid.errors import ConfigError, DataError
from asteroid.fileio import writable_output

MIN_REFERENCE_FRAMES = 10


@dataclass
class Predicted:
    R: np.ndarray  # (B, F, N, 3) Angstrom, may hold non-finite frames
    z: np.ndarray
    dt_fs: float
    start_frame: np.ndarray | None  # (B,) frame of `source` that is each trajectory's last history frame
    source: str | None


def load_predicted(path: str | Path, dt_fs: float | None = None) -> Predicted:
    """An `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs, optionally start_frame and source), or any
    trajectory file `load_trajectory` reads. dt_fs, when given, overrides the file's spacing."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        trajectory = load_trajectory(path, dt_fs=dt_fs, check_order=False)
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
    R = np.asarray(arrays["R"], np.float64)
    R = R[None] if R.ndim == 3 else R
    if R.ndim != 4 or R.shape[-1] != 3 or R.shape[1] == 0 or R.shape[2] == 0:
        raise DataError(f"{path}: R has shape {arrays['R'].shape}, expected (B, F, N, 3) or (F, N, 3) with frames")
    z = np.asarray(arrays["z"]).reshape(-1)
    if len(z) != R.shape[2]:
        raise DataError(f"{path}: z has {len(z)} atoms but R has {R.shape[2]}")
    if dt_fs is None and "dt_fs" not in arrays:
        raise DataError(f"{path}: the file does not say the time between frames; pass --dt-fs")
    dt_fs = float(arrays["dt_fs"]) if dt_fs is None else dt_fs
    if not (math.isfinite(dt_fs) and dt_fs > 0):
        raise DataError(f"{path}: the frame spacing must be a positive number of fs, got {dt_fs}")
    start = arrays.get("start_frame")
    return Predicted(R, z.astype(np.int64), dt_fs, None if start is None else np.atleast_1d(start).astype(np.int64),
                     None if "source" not in arrays else str(arrays["source"]))


def continuation_from(reference, start_frame: np.ndarray, predicted: Predicted, path: Path) -> np.ndarray | None:
    """The reference frames after each start frame (B,) at the predicted spacing: (B, F_c, N, 3), or None when the
    reference ends there."""
    B, F = predicted.R.shape[:2]
    if len(start_frame) != B:
        raise ConfigError(f"{len(start_frame)} start frame(s) for {B} predicted trajectories; give one each")
    stride = predicted.dt_fs / reference.dt_fs
    if abs(stride - round(stride)) > 1e-6 * stride or round(stride) < 1:
        raise DataError(f"{path}: predicted frames {predicted.dt_fs:g} fs apart are not a whole number of the "
                        f"reference's frames ({reference.dt_fs:g} fs)")
    if start_frame.min() < 0 or start_frame.max() >= reference.n_frames:
        raise ConfigError(f"start frames {start_frame.tolist()} outside the reference's {reference.n_frames} frames")
    stride = round(stride)
    kept = min(F, int((reference.n_frames - 1 - start_frame.max()) // stride))
    if kept < 1:
        return None
    index = start_frame[:, None] + stride * np.arange(1, kept + 1)  # (B, F_c)
    return np.asarray(reference.R, np.float64)[index]


def main(argv: list[str]) -> int:
    """`asteroid analyze pred.npz --reference data/ethanol_xtb.npz --out runs/analysis/ethanol`."""
    parser = CommandParser(
        prog="asteroid analyze",
        description="Is a predicted trajectory physical? Bond lengths, angles, dihedrals and radius of gyration "
                    "against a reference trajectory (Jensen-Shannon divergence), the first unphysical frame, the "
                    "coordinate error against the true continuation, optionally GFN2-xTB energies. Prints a table, "
                    "writes report.json and PNG figures.")
    parser.add_argument("predicted", help="an `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs) or any "
                                          "trajectory file")
    parser.add_argument("--reference", required=True, help="the reference trajectory (any trajectory file)")
    parser.add_argument("--out", help="folder for report.json and the figures (default runs/analysis/<PREDICTED>)")
    parser.add_argument("--energies", type=int, default=0, metavar="K",
                        help="GFN2-xTB single points of K predicted frames (seconds each for big molecules)")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write the figures to TensorBoard here")
    parser.add_argument("--dt-fs", type=float, help="fs between predicted frames, if the file does not say")
    parser.add_argument("--reference-dt-fs", type=float, help="fs between reference frames, if the file does not say")
    parser.add_argument("--start", type=int, nargs="+", metavar="FRAME",
                        help="reference frame of each predicted trajectory's start (its last history frame): the "
                             "frames after it are the continuation (default: the rollout file's start_frame when "
                             "its source is the reference)")
    args = parser.parse_args(argv)
    if args.energies < 0:
        raise ConfigError(f"--energies must be >= 0, got {args.energies}")
    predicted_path, reference_path = Path(args.predicted), Path(args.reference)
    predicted = load_predicted(predicted_path, args.dt_fs)
    reference = load_trajectory(reference_path, dt_fs=args.reference_dt_fs)
    if reference.n_atoms != predicted.R.shape[2]:
        raise DataError(f"{predicted_path}: {predicted.R.shape[2]} atoms, but the reference {reference_path} has "
                        f"{reference.n_atoms}")
    if not np.array_equal(reference.z, predicted.z):
        raise DataError(f"{predicted_path}: atomic numbers {predicted.z.tolist()} differ from those of the reference "
                        f"{reference_path} ({reference.z.tolist()})")
    if reference.n_frames < MIN_REFERENCE_FRAMES:
        raise DataError(f"{reference_path}: {reference.n_frames} frame(s); the reference distributions need at least "
                        f"{MIN_REFERENCE_FRAMES}")
    start = None
    if args.start is not None:
        start = np.asarray(args.start, np.int64)
    elif predicted.start_frame is not None and predicted.source is not None \
            and Path(predicted.source).resolve() == reference_path.resolve():
        start = predicted.start_frame
    continuation = None if start is None else continuation_from(reference, start, predicted, predicted_path)
    report = physical_report(predicted.R, predicted.z, predicted.dt_fs, reference.R, reference.dt_fs, continuation)
    if args.energies:
        report["energy"] = energy_comparison(predicted.R, predicted.z, reference.R, args.energies,
                                             gfn2_energies(reference_path, reference))
    out = writable_output(Path(args.out) if args.out else Path("runs") / "analysis" / predicted_path.stem, "folder")
    save_report(report, out, None if args.tensorboard is None else Path(args.tensorboard))
    print(f"\nreport: {out / 'report.json'}, figures: {out}/*.png")
    return 0
