"""Optional GFN2-xTB energies of predicted frames against the reference's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from asteroid.analysis.checks import jsonable
from asteroid.analysis.distributions import HIST_BINS, jensen_shannon, shared_histogram

MIN_FRAMES = 5  # fewer frames with an energy give no mean, spread or distribution: a JSD of one frame says nothing


def xtb_energies(z: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """GFN2-xTB single-point energies (kcal/mol) of frames (M, N, 3), NaN where the SCF fails (a broken geometry)."""
    from ase import Atoms
    from ase.calculators.calculator import CalculatorError

    from asteroid.simulation.xtb import EV_PER_KCAL_MOL, openmp_threads, xtb_calculator  # tblite loads only if asked

    atoms = Atoms(numbers=z)
    atoms.calc = xtb_calculator()
    energies = np.full(len(frames), np.nan)
    with openmp_threads(1):
        for m, frame in enumerate(frames):
            atoms.set_positions(frame)
            try:
                energies[m] = atoms.get_potential_energy() / EV_PER_KCAL_MOL
            except CalculatorError:
                pass
    return energies


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over 0..n-1 (all of them when k >= n)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def energy_comparison(
    predicted: np.ndarray,
    z: np.ndarray,
    reference: np.ndarray,
    samples: int,
    reference_energies: np.ndarray | None = None,
) -> dict:
    """GFN2-xTB energies of `samples` frames evenly spaced through the finite frames of predicted (B, F, N, 3),
    against reference_energies (kcal/mol, GFN2-xTB) or, without them, single points of as many reference frames
    (F_ref, N, 3). Means, standard deviations and the JSD (sqrt(samples) bins, 5 to 64) in kcal/mol."""
    frames = np.asarray(predicted, np.float64).reshape(-1, *predicted.shape[-2:])
    frames = frames[np.isfinite(frames).all((1, 2))]
    if not len(frames):
        return {"samples": 0, "failed": 0, "jsd": None, "reference_source": None}
    z = np.asarray(z).astype(np.int64)
    pred = xtb_energies(z, frames[evenly_spaced(len(frames), samples)])
    if reference_energies is None:
        ref = xtb_energies(z, np.asarray(reference, np.float64)[evenly_spaced(len(reference), samples)])
        source = "GFN2-xTB single points of evenly spaced reference frames"
    else:
        ref, source = np.asarray(reference_energies, np.float64).reshape(-1), "the reference file's GFN2-xTB energies"
    ok, ref = pred[np.isfinite(pred)], ref[np.isfinite(ref)]
    result = {
        "unit": "kcal/mol",
        "samples": len(pred),
        "failed": int((~np.isfinite(pred)).sum()),
        "reference_source": source,
        "reference_count": len(ref),
        "reference_mean": float(ref.mean()),
        "reference_std": float(ref.std()),
        "predicted_mean": None,
        "predicted_std": None,
        "jsd": None,
    }
    if len(ok) < MIN_FRAMES:
        result["note"] = (
            f"only {len(ok)} of {len(pred)} predicted frames have an energy (the SCF failed on the "
            f"others): too few for statistics (at least {MIN_FRAMES})"
        )
    else:
        (lo, hi), p, q = shared_histogram(ok, ref, bins=int(np.clip(round(math.sqrt(len(ok))), 5, HIST_BINS)))
        result |= {
            "predicted_mean": float(ok.mean()),
            "predicted_std": float(ok.std()),
            "jsd": jensen_shannon(p, q),
            "range": [lo, hi],
            "predicted": (p / p.sum()).tolist(),
            "reference": (q / q.sum()).tolist(),
        }
    return jsonable(result)


def gfn2_energies(path: Path, trajectory) -> np.ndarray | None:
    """The reference's energies when its file says they are GFN2-xTB ones (written by `asteroid simulate`)."""
    from asteroid.simulation.xtb import METHOD

    if path.suffix.lower() != ".npz" or trajectory.E is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        method = str(data["method"]) if "method" in data.files else None
    return np.asarray(trajectory.E, np.float64) if method == METHOD else None
