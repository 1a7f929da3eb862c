"""What every trajectory reader shares: one-line messages, frame spacings, numbers a file states."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asteroid.errors import DataError, MissingTimestepError


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0] == "HDF5 error back trace":  # PyTables puts HDF5's C call stack in its message
        causes = [line for line in lines if not line.startswith(('File "', "HDF5 error", "End of HDF5"))]
        lines = causes[-2:-1] or causes  # the innermost cause; the last line only names the file again
    return " ".join(" ".join(lines).split()) or type(exc).__name__


def missing_dt_error(path: Path) -> MissingTimestepError:
    return MissingTimestepError(
        f"{path}: the file does not say the time between frames; pass dt_fs (--dt-fs), e.g. 0.5"
    )


def uniform_step_fs(times_fs: np.ndarray, path: Path) -> float:
    """The constant spacing of frame times (fs); DataError when they do not advance evenly."""
    steps = np.diff(times_fs)
    dt = (times_fs[-1] - times_fs[0]) / len(steps)
    if not dt > 0:
        raise DataError(f"{path}: the frame times in the file do not advance; pass dt_fs (--dt-fs)")
    # xtc stores times as float32: allow its rounding at large absolute times
    tolerance = 1e-3 * dt + 1e-6 * np.abs(times_fs).max()
    if np.abs(steps - dt).max() > tolerance:
        raise DataError(
            f"{path}: frames are not evenly spaced in time (steps from {steps.min():g} to {steps.max():g} fs); "
            "forecasting needs a constant spacing (pass dt_fs to use the frames anyway)"
        )
    # float32 times (xtc, some h5) give 4.9999999 for 5 fs: keep the 6 digits float32 times can carry
    return float(f"{dt:.6g}")


def stated_number(value, key: str, path: Path) -> float:
    """A number the file states under `key` (e.g. dt_fs), or DataError."""
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):  # text, or an array of several values
        raise DataError(f"{path}: {key} must be one number, got {np.asarray(value).tolist()!r:.60}") from None
