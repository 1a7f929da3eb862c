"""GFN2-xTB molecular dynamics (tblite + ASE) written as an MD17-format .npz: the engine of `asteroid simulate`.

The MD17 protocol with GFN2-xTB in place of DFT: relax, Langevin thermalisation at the target
temperature, removal of the net linear and angular momentum, then NVE velocity Verlet (500 K, 0.5 fs).
A run checkpoints its whole dynamical state, and a resumed run gives the very frames an uninterrupted
one would have.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import CalculatorError
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from tqdm import tqdm

from asteroid.errors import AsteroidError, ConfigError
from asteroid.fileio import atomic_output, sole_writer, writable_output
from asteroid.simulation.state import Frames, MDSettings, RunState, checkpoint_path, load_checkpoint, save_checkpoint
from asteroid.simulation.xtb import (
    EV_PER_KCAL_MOL,
    METHOD,
    RELAX_FMAX,
    RELAX_MAX_STEPS,
    TEMPERATURE_K,
    TIMESTEP_FS,
    openmp_threads,
    read_structure,
    structure_path,
    xtb_calculator,
)


def kinetic_dof(atoms: Atoms, keep_rotation: bool) -> int:
    """Degrees of freedom that carry kinetic energy: all of them, or the internal ones after momentum removal."""
    if keep_rotation:
        return 3 * len(atoms)
    moments = atoms.get_moments_of_inertia()
    return 3 * len(atoms) - 3 - int((moments > 1e-6 * moments.max()).sum())  # a linear molecule has 2 rotations


def start_nve(atoms: Atoms, temperature_K: float, keep_rotation: bool, relaxed_energy: float) -> None:
    """Remove the net momenta the thermostat left, then scale the momenta so the NVE run has the target temperature.

    A small molecule's NVE temperature is set by the one total energy it starts with; keeping the
    thermostat's last kinetic energy gives runs anywhere from 380 to 680 K at 500 K (ethanol, 10 seeds).
    So the total energy is set to its canonical mean in the harmonic approximation, kT per vibration
    plus kT/2 per rotation or translation kept, leaving at least half the mean kinetic energy.
    """
    if not keep_rotation:
        Stationary(atoms, preserve_temperature=False)
        ZeroRotation(atoms, preserve_temperature=False)
    kT, dof = units.kB * temperature_K, kinetic_dof(atoms, keep_rotation)
    total = relaxed_energy + 0.5 * (kinetic_dof(atoms, keep_rotation=False) + dof) * kT
    kinetic = max(total - atoms.get_potential_energy(), 0.25 * dof * kT)
    atoms.set_momenta(atoms.get_momenta() * np.sqrt(kinetic / atoms.get_kinetic_energy()))


def energy_drift(e_total_meV_per_atom: np.ndarray, dt_fs: float) -> dict[str, float]:
    """NVE sanity: slope of the total energy (least squares) and its largest deviation from frame 0."""
    t_ps = np.arange(len(e_total_meV_per_atom)) * dt_fs / 1000.0
    slope = np.polyfit(t_ps, e_total_meV_per_atom, 1)[0] if len(t_ps) > 1 else 0.0
    return {
        "drift_meV_per_atom_per_ps": float(slope),
        "max_dE_meV_per_atom": float(np.abs(e_total_meV_per_atom - e_total_meV_per_atom[0]).max()),
    }


def check_options(frames, temperature_K, timestep_fs, every, thermalize_steps, friction, checkpoint_every):
    """Refuse option values no run can use, naming the option."""
    for name, value, minimum in (
        ("frames", frames, 1),
        ("every", every, 1),
        ("thermalize_steps", thermalize_steps, 0),
        ("checkpoint_every", checkpoint_every, 1),
    ):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for name, value in (("temperature_K", temperature_K), ("timestep_fs", timestep_fs), ("friction", friction)):
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def simulate(
    out: str | Path,
    *,
    molecule: str | None = None,
    structure: str | Path | None = None,
    frames: int = 20000,
    temperature_K: float = TEMPERATURE_K,
    timestep_fs: float = TIMESTEP_FS,
    every: int = 1,
    thermalize_steps: int = 500,
    friction: float = 0.02,
    seed: int = 0,
    keep_rotation: bool = False,
    resume: bool = False,
    checkpoint_every: int = 2000,
    progress: bool = True,
) -> dict:
    """Run GFN2-xTB MD and write `out` as MD17-format .npz; returns a report (frames, atoms, ms/step, drift).

    Exactly one of `molecule` (a built-in MD17 name) and `structure` (any ASE-readable file). The molecule
    is relaxed, thermalised for `thermalize_steps` Langevin steps (`friction` in 1/fs), its net linear and
    angular momentum removed (unless `keep_rotation`) and its momenta scaled so the NVE run is at
    `temperature_K` (see `start_nve`); then `(frames - 1) * every` NVE velocity-Verlet steps of `timestep_fs`
    are run and every `every`-th recorded, frame 0 being the start of NVE.
    Every `checkpoint_every` steps the state goes to `checkpoint_path(out)`; with `resume` a run continues
    from that checkpoint (and starts afresh where there is none). `out` appears only when complete.
    """
    check_options(frames, temperature_K, timestep_fs, every, thermalize_steps, friction, checkpoint_every)
    if (molecule is None) == (structure is None):
        raise ConfigError("give exactly one of a built-in molecule (--molecule) and a structure file (--structure)")
    source = structure_path(molecule) if molecule is not None else Path(structure)
    atoms = read_structure(source)
    name = source.stem
    digest = hashlib.sha1(atoms.numbers.astype(np.int64).tobytes() + atoms.positions.tobytes()).hexdigest()[:16]
    settings = MDSettings(
        name=name,
        structure=digest,
        temperature_K=float(temperature_K),
        timestep_fs=float(timestep_fs),
        every=int(every),
        thermalize_steps=int(thermalize_steps),
        friction=float(friction),
        seed=int(seed),
        keep_rotation=bool(keep_rotation),
    )
    out, partial = writable_output(out), checkpoint_path(out)  # found now, not after the whole run
    with sole_writer(out):  # taken first: the checkpoint of a run still going is not one to resume
        if partial.exists() and not resume:
            raise AsteroidError(
                f"{partial}: a checkpoint of an unfinished run is in the way; pass --resume "
                "(resume=True) to continue it, or delete it to start over"
            )
        atoms.calc = xtb_calculator()
        try:
            with openmp_threads(1):
                recorded, ms_per_step = run_md(atoms, settings, frames, partial, checkpoint_every, progress)
        except CalculatorError as exc:
            raise AsteroidError(f"{source}: GFN2-xTB (tblite) failed: {exc}") from exc
        report = write_trajectory(out, partial, atoms, settings, recorded, frames, name)
    return dict(report, ms_per_step=ms_per_step)


def write_trajectory(
    out: Path, partial: Path, atoms: Atoms, settings: MDSettings, recorded: Frames, frames: int, name: str
) -> dict:
    """The finished run as MD17-format .npz (atomically), its checkpoint removed; returns the report."""
    n_atoms, dt_fs = len(atoms), settings.every * settings.timestep_fs
    arrays = {key: value[:frames] for key, value in recorded.arrays(n_atoms).items()}
    e_total = (arrays["E"] + arrays["E_kin"]) * EV_PER_KCAL_MOL * 1000.0 / n_atoms
    drift = energy_drift(e_total, dt_fs)
    dof = kinetic_dof(atoms, settings.keep_rotation)
    mean_temperature = 2 * arrays["E_kin"].mean() * EV_PER_KCAL_MOL / (dof * units.kB)
    with atomic_output(out) as handle:
        np.savez(
            handle,
            **arrays,
            z=atoms.numbers.astype(np.int64),
            dt_fs=dt_fs,
            temperature=settings.temperature_K,
            timestep_fs=settings.timestep_fs,
            seed=settings.seed,
            method=METHOD,
            name=name,
            **drift,
        )
    partial.unlink(missing_ok=True)
    return dict(
        path=str(out),
        name=name,
        n_frames=len(arrays["R"]),
        n_atoms=n_atoms,
        dt_fs=dt_fs,
        temperature_K=settings.temperature_K,
        mean_temperature_K=float(mean_temperature),
        **drift,
    )


def run_md(
    atoms: Atoms, settings: MDSettings, n_frames: int, partial: Path, checkpoint_every: int, progress: bool
) -> tuple[Frames, float]:
    """Thermalise, then run NVE until `n_frames` are recorded; returns them and the NVE cost in ms/step."""
    if partial.exists():
        state = load_checkpoint(partial, atoms, settings)
    else:
        BFGS(atoms, logfile=None).run(fmax=RELAX_FMAX, steps=RELAX_MAX_STEPS)
        state = RunState(
            step=0,
            frames=Frames(),
            rng=np.random.default_rng(settings.seed),
            relaxed_energy=atoms.get_potential_energy(),
        )
        kT = units.kB * settings.temperature_K
        atoms.set_momenta(np.sqrt(atoms.get_masses() * kT)[:, None] * state.rng.standard_normal((len(atoms), 3)))
    dt = settings.timestep_fs * units.fs
    langevin = Langevin(
        atoms,
        dt,
        temperature_K=settings.temperature_K,
        friction=settings.friction / units.fs,
        fixcm=False,
        rng=state.rng,
    )
    verlet = VelocityVerlet(atoms, dt)
    frames, thermalized = state.frames, settings.thermalize_steps

    def count_step():
        state.step += 1
        if state.step % checkpoint_every == 0:
            save_checkpoint(partial, atoms, state, settings)

    bar_options = dict(file=sys.stderr, dynamic_ncols=True)
    with tqdm(
        total=thermalized,
        initial=min(state.step, thermalized),
        unit="step",
        desc=f"{settings.name}: Langevin",
        disable=not progress or state.step >= thermalized,
        **bar_options,
    ) as bar:
        while state.step < thermalized:
            langevin.step()
            count_step()
            bar.update()
    if not frames:
        start_nve(atoms, settings.temperature_K, settings.keep_rotation, state.relaxed_energy)
        frames.record(atoms)
    nve_seconds, nve_steps = 0.0, 0
    with tqdm(
        total=n_frames,
        initial=min(len(frames), n_frames),
        unit="frame",
        desc=f"{settings.name}: NVE",
        disable=not progress,
        **bar_options,
    ) as bar:
        while len(frames) < n_frames:
            started = time.perf_counter()
            verlet.step()
            nve_seconds, nve_steps = nve_seconds + time.perf_counter() - started, nve_steps + 1
            if (state.step + 1 - thermalized) % settings.every == 0:
                frames.record(atoms)
                bar.set_postfix_str(f"{1000 * nve_seconds / nve_steps:.2f} ms/step", refresh=False)
                bar.update()
            count_step()
    return frames, (1000 * nve_seconds / nve_steps if nve_steps else float("nan"))


def run_summary(report: dict) -> str:
    """What `simulate` made, in three lines: the file, its cost, and its energy drift."""
    return (
        f"{report['path']}: {report['n_frames']} frames x {report['n_atoms']} atoms of {report['name']}, "
        f"{report['dt_fs']:g} fs apart ({METHOD}, NVE at {report['temperature_K']:g} K, "
        f"mean kinetic temperature {report['mean_temperature_K']:.0f} K)\n"
        f"cost: {report['ms_per_step']:.2f} ms/step\n"
        f"NVE total-energy drift: {report['drift_meV_per_atom_per_ps']:+.4f} meV/atom/ps, "
        f"max |E_tot - E_tot(0)| {report['max_dE_meV_per_atom']:.4f} meV/atom"
    )
