"""What a trajectory file holds and whether it can be forecast: the summary `asteroid inspect` prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.formula import Formula

from asteroid.data.readers import load_trajectory, trajectory_format
from asteroid.data.time_order import (
    MIN_FRAMES,
    largest_jump,
    mean_step_displacement,
    time_order_ratio,
    time_order_verdict,
)


def summarize(
    path: str | Path, *, topology: str | Path | None = None, selection: str | None = None, dt_fs: float | None = None
) -> dict:
    """Facts about a trajectory file, as a dict (keys as printed by `asteroid inspect`)."""
    traj = load_trajectory(path, topology=topology, selection=selection, dt_fs=dt_fs, check_order=False)
    formula = Formula.from_list([chemical_symbols[number] for number in traj.z]).format("hill")
    ratio = time_order_ratio(traj.R)
    jump = largest_jump(traj.R)
    verdict = {
        True: "time-ordered",
        False: "looks shuffled",
        None: "too short to tell" if traj.n_frames < MIN_FRAMES else "cannot tell (frames do not move)",
    }
    return {
        "file": str(path),
        "format": trajectory_format(path),
        "frames": traj.n_frames,
        "atoms": traj.n_atoms,
        "formula": formula,
        "element_counts": dict(Formula(formula).count()),  # Hill order, as in the formula
        "dt_fs": traj.dt_fs,
        "duration_ps": (traj.n_frames - 1) * traj.dt_fs / 1000.0,
        "mean_step_angstrom": mean_step_displacement(traj.R),
        "time_order_ratio": ratio,
        "time_order": verdict[time_order_verdict(ratio)]
        if jump is None
        else (
            f"discontinuous: atom {jump['atom']} moves {jump['distance']:.3g} A between frames {jump['frame']} and "
            f"{jump['frame'] + 1} (the fastest atom's typical step: {jump['typical']:.3g} A)"
        ),
        "energies": traj.E is not None,
        "forces": traj.F is not None,
        # lengths of the first frame's cell vectors (Angstrom), None for open boundaries
        "box_angstrom": None if traj.box is None else np.linalg.norm(traj.box[0], axis=1).round(4).tolist(),
        "generated_by": generator_record(Path(path)),
    }


GENERATOR_KEYS = ("method", "temperature", "timestep_fs", "seed", "drift_meV_per_atom_per_ps", "max_dE_meV_per_atom")


def generator_record(path: Path) -> dict | None:
    """What `asteroid simulate` stored about how it made an .npz (method, temperature, drift...), or None."""
    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as data:
        record = {key: data[key].item() for key in GENERATOR_KEYS if key in data.files and data[key].ndim == 0}
    return record if "method" in record else None


def _generator_line(record: dict | None) -> str:
    if record is None:
        return "not recorded in the file"
    parts = [str(record["method"])]
    if "temperature" in record:
        parts.append(f"NVE after thermalising at {record['temperature']:g} K")
    if "timestep_fs" in record:
        parts.append(f"{record['timestep_fs']:g} fs steps")
    if "drift_meV_per_atom_per_ps" in record:
        parts.append(f"total-energy drift {record['drift_meV_per_atom_per_ps']:+.4f} meV/atom/ps")
    if "seed" in record:
        parts.append(f"seed {record['seed']}")
    return ", ".join(parts)


def format_summary(summary: dict) -> str:
    """The summary as aligned `label: value` lines."""
    counts = ", ".join(f"{symbol} {n}" for symbol, n in summary["element_counts"].items())
    rows = [
        ("file", summary["file"]),
        ("format", summary["format"]),
        ("frames", summary["frames"]),
        ("atoms", summary["atoms"]),
        ("elements", f"{summary['formula']} ({counts})"),
        ("dt", f"{summary['dt_fs']:g} fs"),
        ("duration", f"{summary['duration_ps']:g} ps"),
        ("mean step", f"{summary['mean_step_angstrom']:.4g} Angstrom (RMS per atom, consecutive frames)"),
        (
            "time order",
            f"{summary['time_order']} (consecutive/random displacement ratio {summary['time_order_ratio']:.3f})",
        ),
        ("made by", _generator_line(summary["generated_by"])),
        ("energies", "yes" if summary["energies"] else "no"),
        ("forces", "yes" if summary["forces"] else "no"),
        (
            "box",
            "none (open boundaries)"
            if summary["box_angstrom"] is None
            else "periodic, cell vectors "
            + " x ".join(f"{length:g}" for length in summary["box_angstrom"])
            + " Angstrom "
            "(coordinates unwrapped)",
        ),
    ]
    return "\n".join(f"{label + ':':<12} {value}" for label, value in rows)
