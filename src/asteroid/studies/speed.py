"""Timing forecasts against the MD that made the data, per simulated picosecond (the measurements of
`asteroid benchmark`): MD steps through the generator's own code path, model rollouts at batch 1 and B, FLOPs, and
water clusters of any size to time larger systems."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from torch.utils.flop_counter import FlopCounterMode

from asteroid.api.forecaster import load_with_data
from asteroid.data import load_trajectory
from asteroid.data.starts import start_from_test_split
from asteroid.errors import ConfigError
from asteroid.lightning_cli import from_config
from asteroid.models.rollout import PARTS, default_thermostat, rollout
from asteroid.simulation.xtb import (
    TEMPERATURE_K,
    TIMESTEP_FS,
    openmp_threads,
    read_structure,
    structure_path,
    xtb_calculator,
)
from asteroid.training.test_table import read_model_rows

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
WATER_SPACING = 3.1  # Angstrom between the oxygens of a water cluster, about liquid water's density


def cpu_name() -> str:
    """The processor's model name, for the record."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def seconds_per_ps(seconds: float, frames: int, frame_fs: float, trajectories: int = 1) -> float:
    """Cost of one simulated picosecond of one trajectory: `seconds` made `frames` frames `frame_fs` apart each."""
    return seconds / (frames * frame_fs / 1000.0) / trajectories


def measure(clock: str, run, repeats: int) -> float:
    """Median over `repeats` calls of run(), in seconds of the clock: the median shrugs off a disturbed call."""
    now = CLOCKS[clock]
    times = []
    for _ in range(repeats):
        start = now()
        run()
        times.append(now() - start)
    return statistics.median(times)


def md_seconds_per_ps(atoms: Atoms, steps: int, warmup: int, repeats: int, threads: int, clock: str) -> float:
    """The generator's NVE: its calculator, velocity Verlet at its time step, from Maxwell-Boltzmann velocities.

    `steps` steps after `warmup` untimed ones, `repeats` times; the median is scaled to a simulated picosecond.
    """
    atoms = atoms.copy()
    atoms.calc = xtb_calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))
    verlet = VelocityVerlet(atoms, TIMESTEP_FS * units.fs)

    def run_steps(count: int) -> None:
        for _ in range(count):
            verlet.step()

    with openmp_threads(threads):
        run_steps(warmup)
        seconds = measure(clock, lambda: run_steps(steps), repeats)
    return seconds_per_ps(seconds, steps, TIMESTEP_FS)


def thermal_speed(atoms: Atoms) -> np.ndarray:
    """(N,) Angstrom/fs: standard deviation of each velocity component at the generator's temperature."""
    return np.sqrt(units.kB * TEMPERATURE_K / atoms.get_masses()) * units.fs


def ballistic_history(atoms: Atoms, trajectories: int, frames: int, frame_fs: float, seed: int = 0) -> np.ndarray:
    """(B, H, N, 3) Angstrom: the structure moved along Maxwell-Boltzmann velocities (one draw per trajectory),
    `frame_fs` apart and ending at the structure itself.

    The model's cost depends on the atom count and the neighbours within its cutoff, not on where the atoms go,
    so the history need only be the molecule's geometry with thermal motion of the right size.
    """
    rng = np.random.default_rng(seed)
    velocities = thermal_speed(atoms)[:, None] * rng.standard_normal((trajectories, len(atoms), 3))  # (B, N, 3)
    times = (np.arange(frames) - (frames - 1)) * frame_fs  # (H,) fs, the last frame at 0
    return atoms.positions + times[None, :, None, None] * velocities[:, None]  # (B, H, N, 3)


def model_seconds_per_ps(
    net,
    atoms: Atoms,
    trajectories: int,
    forecasts: int,
    frame_fs: float,
    device: torch.device,
    repeats: int,
    clock: str,
    starts: np.ndarray | None = None,
    compiled: bool = False,
) -> tuple[float, dict]:
    """Seconds per simulated picosecond of one trajectory, rolling out `trajectories` at once, and the milliseconds
    of one forecast (of all trajectories) that each of its parts takes (`models.rollout.PARTS` that ran, and the rest).

    One untimed forecast warms up; then `repeats` rollouts of `forecasts` whole forecasts each are timed, with the
    settings `asteroid rollout` uses by default, and one more with its parts timed (`rollout(..., timings=)`) for the
    split. `frame_fs` is the time between predicted frames (spacing x data frame time).
    starts (S, H, N, 3): real histories (a trained model's test windows), repeated to `trajectories`; without them,
    ballistic ones. A trained model's constraint step costs what its forecasts' distance from the constraints
    costs, and a straight-line history is further from anything it was trained on. compiled: as `asteroid rollout
    --compile` (compiled in the warm-up).
    """
    if starts is None:
        starts = ballistic_history(atoms, trajectories, net.history, frame_fs)
    history = torch.tensor(np.resize(starts, (trajectories, *starts.shape[1:])), dtype=torch.float32, device=device)
    z = torch.as_tensor(atoms.numbers, device=device).expand(trajectories, -1)  # (B, N)
    mask = torch.ones_like(z, dtype=torch.bool)
    frames = forecasts * net.horizon

    # what `asteroid rollout` does by default: draws, projected, rigid motion stripped, the thermostat on
    coupling = default_thermostat(net)

    def run(n_frames: int, timings: dict | None = None) -> None:
        rollout(net, history, z, mask, n_frames, thermostat_coupling=coupling, timings=timings, compiled=compiled)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run(net.horizon)
    seconds = seconds_per_ps(measure(clock, lambda: run(frames), repeats), frames, frame_fs, trajectories)
    timings: dict = {}
    whole = measure("cpu", lambda: run(frames, timings), 1)  # the parts on the CPU clock, beside their total
    split = {part: timings[part] * 1e3 / forecasts for part in PARTS if part in timings}  # ms per forecast
    split["rest"] = max(0.0, whole * 1e3 / forecasts - sum(split.values()))
    return seconds, split


def window_histories(datamodule, count: int, spacing: int) -> np.ndarray | None:
    """(S, H, N, 3) the histories of up to `count` test windows spread over the test split, as `asteroid rollout
    --batch` picks them; None when the data module's files are not here (nothing is generated for a benchmark)."""
    if not all(Path(source.path).exists() for source in datamodule.sources):
        return None
    datamodule.prepare_data()
    datamodule.setup("test")
    count = min(count, len(datamodule.datasets["test"]))
    return start_from_test_split(datamodule, count, spacing, n_frames=0).history


def water_cluster(molecules: int, seed: int = 0) -> Atoms:
    """`molecules` waters, randomly oriented, on the smallest cubic grid that holds them, WATER_SPACING apart."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(molecules ** (1 / 3) - 1e-9))
    sites = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:molecules]
    cluster = Atoms()
    for site in sites:
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COP")
        water.translate(site * WATER_SPACING - water.get_center_of_mass())
        cluster += water
    return cluster


def forecast_flops(net, atoms: Atoms, device: torch.device) -> int:
    """FLOPs of one forecast of one trajectory (torch's FLOP counter: matrix products and attention)."""
    history = torch.tensor(ballistic_history(atoms, 1, net.history, 1.0), dtype=torch.float32, device=device)
    z = torch.as_tensor(atoms.numbers, device=device)[None]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(history, z, torch.ones_like(z, dtype=torch.bool))
    return counter.get_total_flops()


def checkpoint_test_mse(ckpt_path: str | None) -> float | None:
    """Mean test MSE (Angstrom^2, over the horizon steps) that the checkpoint's own run measured: the test_metrics.csv
    of its run folder (runs/<name>/version_N/checkpoints/x.ckpt -> runs/<name>/version_N/); None without one."""
    if ckpt_path is None:
        return None
    table = Path(ckpt_path).resolve().parent.parent / "test_metrics.csv"
    if not table.is_file():
        return None
    values = [float(r["mse"]) for r in read_model_rows(table)]
    return float(np.mean(values)) if values else None


def config_molecule(datamodule) -> tuple[str, Atoms, float]:
    """Name, starting structure and data frame time (fs) of a config's first trajectory source.

    A built-in molecule starts from its shipped structure, any other source from its first frame; a built-in
    molecule whose data is yet to be generated has the generator's time step.
    """
    source = datamodule.sources[0]
    if source.molecule is not None and not Path(source.path).exists():
        return source.molecule, read_structure(structure_path(source.molecule)), source.dt_fs or TIMESTEP_FS
    traj = load_trajectory(
        source.path, topology=source.topology, selection=source.selection, dt_fs=source.dt_fs, check_order=False
    )
    if source.molecule is not None:
        return source.molecule, read_structure(structure_path(source.molecule)), traj.dt_fs
    return traj.name, Atoms(numbers=traj.z, positions=np.asarray(traj.R[0], dtype=np.float64)), traj.dt_fs


def load_net(config: Path | None, ckpt_path: str | None, device: torch.device, name: str | None = None):
    """The net of a config and/or a checkpoint (with its weights; `last`: the config's newest last.ckpt) in eval
    mode, its data module, and the checkpoint file used (None: untrained)."""
    if config is not None and not config.is_file():
        raise ConfigError(f"{config}: config file not found")
    args = ([] if config is None else ["--config", str(config)]) + ([] if name is None else ["--name", name])
    if ckpt_path is None:
        cli = from_config(args)
        return cli.model.net.to(device).eval(), cli.datamodule, None
    forecaster, datamodule = load_with_data(ckpt_path, args)
    return forecaster.net.to(device), datamodule, forecaster.checkpoint
