"""Read a trajectory file of any supported format into a Trajectory (Angstrom, femtoseconds)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from asteroid.data.mdtraj_files import (
    MDTRAJ_SUFFIXES,
    element_topology,
    read_mdtraj,
    select_atoms,
)
from asteroid.data.read_common import missing_dt_error, one_line, stated_number, uniform_step_fs
from asteroid.data.time_order import THRESHOLD, TimeOrderWarning, largest_jump, time_order_ratio
from asteroid.data.trajectory import Trajectory
from asteroid.errors import DataError

MD17_DT_FS = 0.5  # sGDML MD17 trajectories store every 0.5 fs step
SGDML_KEYS = {"theory", "md5"}  # metadata only sGDML dataset files carry
RMD17_KEYS = {"coords", "nuclear_charges"}
FORMATS = {
    ".npz": "npz (sGDML MD17/MD22 layout)",
    ".extxyz": "extended XYZ (ASE)",
    ".xyz": "XYZ (ASE)",
    ".traj": "ASE trajectory",
    ".dcd": "DCD (mdtraj)",
    ".xtc": "XTC (mdtraj)",
    ".trr": "TRR (mdtraj)",
    ".nc": "AMBER NetCDF (mdtraj)",
    ".h5": "MDTraj HDF5 (mdtraj)",
    ".pdb": "multi-model PDB (mdtraj)",
}


def trajectory_format(path: str | Path) -> str:
    """Human-readable name of the format `load_trajectory` reads `path` as."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown trajectory suffix {suffix!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[suffix]


def _read_npz(path: Path, dt_fs: float | None, name: str) -> Trajectory:
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # numpy would try it as a pickle and say so
            raise DataError(f"{path}: not an npz file (an npz is a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            arrays = {key: data[key] for key in ("R", "z", "E", "F", "dt_fs", "box") if key in keys}
    except zipfile.BadZipFile:
        raise DataError(f"{path}: cannot read the npz file: its zip archive is truncated or damaged") from None
    except Exception as exc:  # zlib and numpy raise their own types on a damaged file
        raise DataError(f"{path}: cannot read the npz file ({one_line(exc)})") from exc
    if RMD17_KEYS <= keys:
        raise DataError(
            f"{path}: this is a revised MD17 (rMD17) file: its frames are random samples, not a time-ordered "
            "trajectory, so it cannot be used for forecasting; use the original MD17 file instead "
            "(sGDML md17_<molecule>.npz, dataset name md17:<molecule>)"
        )
    missing = [key for key in ("R", "z") if key not in keys]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} in the npz file; found keys {sorted(keys)}, expected "
            "R (frames, atoms, 3) Angstrom and z (atoms,), optionally E, F, dt_fs and box"
        )
    if dt_fs is None and "dt_fs" in arrays:
        dt_fs = stated_number(arrays["dt_fs"], "dt_fs", path)
    if dt_fs is None and SGDML_KEYS & keys:
        dt_fs = MD17_DT_FS
    if dt_fs is None:
        raise missing_dt_error(path)
    E = arrays.get("E")
    return Trajectory(
        R=arrays["R"],
        z=arrays["z"],
        dt_fs=dt_fs,
        name=name,
        source=str(path),
        E=None if E is None else E.reshape(-1),
        F=arrays.get("F"),
        box=arrays.get("box"),
    )


def _ase_dt_fs(frames: list, path: Path) -> float | None:
    info = frames[0].info
    if "dt_fs" in info:
        steps = {stated_number(atoms.info.get("dt_fs", info["dt_fs"]), "dt_fs", path) for atoms in frames}
        if len(steps) > 1:
            raise DataError(
                f"{path}: its frames state different dt_fs ({', '.join(f'{dt:g}' for dt in sorted(steps))} fs); "
                "forecasting needs one constant spacing"
            )
        return steps.pop()
    for key in ("time_fs", "time"):  # CP2K writes `time = ...` (fs) in its xyz comment lines
        if len(frames) > 1 and all(key in atoms.info for atoms in frames):
            return uniform_step_fs(np.array([stated_number(atoms.info[key], key, path) for atoms in frames]), path)
    return None


def _calc_results(frames: list, key: str) -> np.ndarray | None:
    """Per-frame energies or forces when every frame carries them."""
    if all(atoms.calc is not None and key in atoms.calc.results for atoms in frames):
        return np.stack([np.asarray(atoms.calc.results[key]) for atoms in frames])
    return None


def _ase_box(frames: list, path: Path) -> np.ndarray | None:
    """(T, 3, 3) cells of frames periodic in all three directions, None for open ones (ASE's pbc flags)."""
    pbc = np.array([atoms.pbc for atoms in frames])  # (T, 3)
    if not pbc.any():
        return None
    if not pbc.all():
        raise DataError(
            f"{path}: periodic in only some directions (pbc {pbc[np.argmin(pbc.all(axis=1))].tolist()});"
            " only fully periodic cells or open boundaries are supported"
        )
    return np.stack([atoms.cell.array for atoms in frames])


def _read_ase(path: Path, dt_fs: float | None, name: str) -> Trajectory:
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises ValueError, IndexError, ... on malformed or cut files
        raise DataError(f"{path}: cannot read the file with ASE ({one_line(exc)})") from exc
    if not frames:
        raise DataError(f"{path}: the trajectory has no frames")
    z = frames[0].numbers
    for t, atoms in enumerate(frames):
        if len(atoms) != len(z) or not np.array_equal(atoms.numbers, z):
            raise DataError(
                f"{path}: the atoms change at frame {t} ({len(z)} atoms in frame 0, {len(atoms)} "
                f"in frame {t}); a trajectory needs the same atoms in every frame"
            )
    if dt_fs is None:
        dt_fs = _ase_dt_fs(frames, path)
    if dt_fs is None:
        raise missing_dt_error(path)
    R = np.stack([atoms.positions for atoms in frames])  # (T, N, 3) Angstrom
    return Trajectory(
        R=R,
        z=z,
        dt_fs=dt_fs,
        name=name,
        source=str(path),
        E=_calc_results(frames, "energy"),
        F=_calc_results(frames, "forces"),
        box=_ase_box(frames, path),
    )


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a trajectory file")
    trajectory_format(path)  # unknown suffix -> DataError
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def warn_if_shuffled(traj: Trajectory) -> None:
    """Warn (TimeOrderWarning) when the frames of `traj` look shuffled rather than time-ordered, or jump."""
    ratio = time_order_ratio(traj.R)
    if ratio >= THRESHOLD:  # False for nan: too short to tell
        warnings.warn(
            TimeOrderWarning(
                f"{traj.source}: frames look shuffled, not time-ordered (consecutive frames are {ratio:.2f} times "
                "as far apart as random frames); forecasting needs consecutive MD frames"
            ),
            stacklevel=3,
        )
        return
    jump = largest_jump(traj.R)
    if jump is not None:
        warnings.warn(
            TimeOrderWarning(
                f"{traj.source}: atom {jump['atom']} jumps {jump['distance']:.3g} A between frames {jump['frame']} and "
                f"{jump['frame'] + 1} (the fastest atom's typical step is {jump['typical']:.3g} A): the frames are not "
                "one continuous trajectory there"
            ),
            stacklevel=3,
        )


def load_trajectory(
    path: str | Path,
    *,
    topology: str | Path | None = None,
    selection: str | None = None,
    dt_fs: float | None = None,
    name: str | None = None,
    check_order: bool = True,
) -> Trajectory:
    """Read a trajectory file, choosing the reader by suffix.

    .npz (MD17/MD22 sGDML layout or our generator), .extxyz/.xyz/.traj (ASE), .dcd/.xtc/.trr/.nc/.h5
    and multi-model .pdb (mdtraj, with `topology` unless the file carries its own). A periodic cell in the
    file becomes `Trajectory.box`, and the coordinates come back unwrapped (continuous in time). `selection` is an
    mdtraj selection (e.g. "not element H"); for .npz and ASE files it is evaluated on a topology of
    one residue whose atoms are named by their element symbol, so element, name, index and mass
    selections work there. `dt_fs`, when given, overrides the frame spacing the file states.
    Raises DataError naming the file and the problem; warns TimeOrderWarning on shuffled frames.
    """
    path = _checked_path(path)
    name = path.stem if name is None else name
    if path.suffix.lower() in MDTRAJ_SUFFIXES:
        traj = read_mdtraj(path, topology, selection, dt_fs, name)
    else:
        if topology is not None:
            raise DataError(
                f"{path}: a topology is only used with mdtraj formats "
                f"({', '.join(sorted(MDTRAJ_SUFFIXES))}); this file names its atoms itself"
            )
        read = _read_npz if path.suffix.lower() == ".npz" else _read_ase
        traj = read(path, dt_fs, name)
        if selection is not None:
            traj = traj.select_atoms(select_atoms(element_topology(traj.z), selection, path))
    traj = traj.unwrapped()
    if check_order:
        warn_if_shuffled(traj)
    return traj
