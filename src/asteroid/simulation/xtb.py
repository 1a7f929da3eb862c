"""GFN2-xTB through tblite, as our MD generator, the analysis and the benchmark use it: the calculator, the
shipped MD17 structures, and the settings of the MD17 protocol."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import ase.io
from ase import Atoms, units
from tblite.ase import TBLite

from asteroid.errors import DataError

BUILTIN_MOLECULES: tuple[str, ...] = (
    "aspirin",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "salicylic",
    "toluene",
    "uracil",
)
ALIASES = {"salicylic_acid": "salicylic"}
METHOD = "GFN2-xTB/tblite"
EV_PER_KCAL_MOL = units.kcal / units.mol
RELAX_FMAX = 0.05  # eV/A: takes the strain out of a hand-made structure; the thermostat does the rest
RELAX_MAX_STEPS = 500
TEMPERATURE_K, TIMESTEP_FS = 500.0, 0.5  # the MD17 settings


def structure_path(name: str) -> Path:
    """The shipped starting structure (.xyz) of a built-in MD17 molecule; 'salicylic acid' is 'salicylic'."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in BUILTIN_MOLECULES:
        raise DataError(
            f"unknown molecule {name!r}: the built-in molecules are {', '.join(BUILTIN_MOLECULES)} "
            "(pass a structure file for any other)"
        )
    return Path(__file__).parents[1] / "structures" / f"{key}.xyz"


def read_structure(path: str | Path) -> Atoms:
    """A molecule in vacuum from any ASE-readable file (the last frame if it holds several)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: " + ("is a directory, not a structure file" if path.is_dir() else "structure file not found")
        )
    try:
        atoms = ase.io.read(path)
    except Exception as exc:  # ASE's readers raise whatever their parser hits on a malformed file
        raise DataError(f"{path}: cannot read a structure from it ({type(exc).__name__}: {exc})") from exc
    if len(atoms) < 2:
        raise DataError(f"{path}: molecular dynamics needs at least 2 atoms, the file has {len(atoms)}")
    return Atoms(numbers=atoms.numbers, positions=atoms.positions)


class PositionOnlyTBLite(TBLite):
    """tblite's ASE calculator with each SCF started from the same guess.

    TBLite restarts the SCF from the previous step's wavefunction, which leaves ~1e-4 eV/A of history in
    the forces: a run resumed from a checkpoint would part from the uninterrupted one. Starting afresh
    each step (~15% slower) makes energy and forces a function of the positions alone.
    """

    def calculate(self, *args, **kwargs):
        self._xtb = self._res = None
        super().calculate(*args, **kwargs)


def xtb_calculator() -> PositionOnlyTBLite:
    """The generator's GFN2-xTB calculator (tblite, quiet, each SCF from the same guess)."""
    return PositionOnlyTBLite(method="GFN2-xTB", verbosity=0)


@contextlib.contextmanager
def openmp_threads(count: int = 1):
    """Run tblite on `count` OpenMP threads while inside.

    The generator uses one: threaded sums differ in the last bits from call to call, which chaos amplifies
    into different trajectories; for molecules of MD17 size one thread is also as fast as two.
    """
    try:
        gomp = ctypes.CDLL("libgomp.so.1")  # the loaded GNU OpenMP runtime, shared with tblite (and torch)
    except OSError:  # another OpenMP runtime: tblite runs as its build decides
        yield
        return
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(count)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)
