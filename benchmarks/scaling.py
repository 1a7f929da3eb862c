"""Time and peak memory of one ASTEROID training step and one inference step against the number of atoms.

    python benchmarks/scaling.py [--sizes 9 27 108 ...] [--out docs/results/scaling.csv]

Systems: copies of ethanol (9 atoms) on a cubic grid SPACING Angstrom apart, each copy jittered per frame (about
15 neighbours per atom within the 5 Angstrom cutoff at 10,000 atoms, fewer in the smaller, more surface-heavy
grids). Model: the experiments' ASTEROID (base.yaml's settings: cutoff 5 Angstrom, 16 RBFs, STI on) with global
attention through 32 latent tokens, and neighbours from the cell list above 128 atoms
("auto"); one window (batch 1) of 8 history and 8 horizon frames. A training step is what ForecastModule does
per batch: random rotation, forward with
teacher forcing and scheduled sampling, forecast + weighted STI losses, backward, AdamW step. An inference step is
one forecast under torch.no_grad().

Method: every (N, mode) runs in a fresh Python process with one torch thread (and one OpenMP thread for vesin).
seconds is the median over the timed steps, after one warm-up step, of the process's CPU time (user + system,
getrusage) during the step: with one thread that is the step's compute time, and unlike wall time it does not
count the time other jobs on a shared machine hold the cores (wall time is printed beside it). User and system
time are printed apart, with the slope of the user time alone: the system part is page faults, which grew faster
than the rest (glibc maps every block above 32 MB afresh, and the kernel zeroes its pages at each step).
peak_mb is that process's peak resident memory (getrusage ru_maxrss, MiB), so it includes the interpreter, torch
and the model (`idle_mb`, printed per run, is the peak before the first step).

Writes docs/results/scaling.csv (n_atoms,mode,seconds,peak_mb) and a log-log plot beside it (scaling.png), and
prints the fitted slope of log(seconds) against log(n_atoms) between 100 and 10,000 atoms.
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = (9, 27, 108, 297, 999, 2997, 9999)  # whole ethanol copies: 1, 3, 12, 33, 111, 333, 1111
SPACING = 6.0  # Angstrom between copies
HISTORY, HORIZON, LATENT_TOKENS = 8, 8, 32
SLOPE_RANGE = (100, 10000)


def replicated_ethanol(n_atoms: int, frames: int, seed: int = 0):
    """(frames, n, 3) coordinates of n_atoms // 9 ethanol copies on a cubic grid, and their atomic numbers."""
    from importlib.resources import files

    import ase.io

    molecule = ase.io.read(files("asteroid") / "structures" / "ethanol.xyz")
    copies = n_atoms // len(molecule)
    side = int(np.ceil(copies ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:copies] * SPACING
    positions = (grid[:, None, :] + molecule.positions[None]).reshape(-1, 3)  # (n, 3)
    rng = np.random.default_rng(seed)
    R = positions + rng.normal(scale=0.05, size=(frames,) + positions.shape)
    return R.astype(np.float32), np.tile(molecule.numbers, copies)


def measure(n_atoms: int, mode: str, repeats: int) -> dict:
    """One (N, mode) point, in this process."""
    import torch

    from asteroid.models import Asteroid
    from asteroid.training.augment import random_rotations, rotate
    from asteroid.training.module import ForecastModule

    torch.set_num_threads(1)
    torch.manual_seed(0)
    R, z = replicated_ethanol(n_atoms, HISTORY + HORIZON)
    frames = torch.from_numpy(R)[None]  # (1, H+P, N, 3)
    history, target = frames[:, :HISTORY], frames[:, HISTORY:]
    z = torch.from_numpy(z)[None]
    mask = torch.ones_like(z, dtype=torch.bool)
    net = Asteroid(HISTORY, HORIZON, latent_tokens=LATENT_TOKENS)
    net.set_displacement_scale(torch.full((HORIZON,), 0.1))
    module = ForecastModule(net)  # its losses, so that the step is the one training runs
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def train_step():
        rotation = random_rotations(1)
        rotated_history, rotated_target = rotate(history, rotation), rotate(target, rotation)
        out = net(rotated_history, z, mask, target=rotated_target, sampling_prob=0.25)
        loss = module.forecast_loss(out.pred, rotated_target, mask)
        loss = loss + sum(module.aux_loss_weights[name] * value for name, value in out.losses.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step():
        with torch.no_grad():
            net(history, z, mask)

    step = train_step if mode == "train" else infer_step
    net.train(mode == "train")
    idle_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up
    user, system, wall = [], [], []
    for _ in range(repeats):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        after = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - start)
        user.append(after.ru_utime - before.ru_utime)
        system.append(after.ru_stime - before.ru_stime)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    cpu = np.add(user, system)
    return dict(
        n_atoms=n_atoms,
        mode=mode,
        seconds=float(np.median(cpu)),
        user_seconds=float(np.median(user)),
        system_seconds=float(np.median(system)),
        wall_seconds=float(np.median(wall)),
        peak_mb=peak_mb,
        idle_mb=idle_mb,
    )


def run_fresh(n_atoms: int, mode: str, repeats: int) -> dict:
    """measure() in a new process, so that each peak memory is that point's alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--worker", str(n_atoms), mode, "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{n_atoms} atoms, {mode}: the worker failed\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fitted_slope(rows: list[dict], mode: str, key: str = "seconds") -> float:
    """Least-squares slope of log(row[key]) against log(n_atoms) over SLOPE_RANGE."""
    points = [
        (r["n_atoms"], r[key]) for r in rows if r["mode"] == mode and SLOPE_RANGE[0] <= r["n_atoms"] <= SLOPE_RANGE[1]
    ]
    n, seconds = np.log(np.array(points)).T
    return float(np.polyfit(n, seconds, 1)[0])


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from asteroid.fileio import atomic_output

    figure = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(figure)
    time_axis, memory_axis = figure.subplots(1, 2)
    for mode, marker in (("train", "o"), ("infer", "s")):
        points = sorted((r["n_atoms"], r["seconds"], r["peak_mb"]) for r in rows if r["mode"] == mode)
        n, seconds, peak = np.array(points).T
        time_axis.loglog(n, seconds, marker=marker, label=f"{mode} (slope {fitted_slope(rows, mode):.2f})")
        memory_axis.loglog(n, peak, marker=marker, label=mode)
    first = min(
        (r for r in rows if r["mode"] == "train" and r["n_atoms"] >= SLOPE_RANGE[0]), key=lambda r: r["n_atoms"]
    )
    reference = np.array([first["n_atoms"], SLOPE_RANGE[1]], dtype=float)
    time_axis.loglog(reference, first["seconds"] * reference / reference[0], "k--", lw=0.8, label="slope 1")
    time_axis.set(xlabel="atoms", ylabel="CPU seconds per step", title="one step, 1 window of 8 + 8 frames, 1 thread")
    memory_axis.set(xlabel="atoms", ylabel="peak resident memory (MiB)", title="whole process (ru_maxrss)")
    time_axis.legend()
    memory_axis.legend()
    with atomic_output(path, "wb", suffix=".png") as handle:
        figure.savefig(handle, format="png", dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="atom counts (multiples of 9)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point, after one warm-up")
    parser.add_argument("--out", type=Path, default=Path("docs/results/scaling.csv"))
    parser.add_argument("--worker", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(int(args.worker[0]), args.worker[1], args.repeats)))
        return

    from asteroid.fileio import atomic_output

    rows = []
    for n_atoms in args.sizes:
        for mode in ("train", "infer"):
            row = run_fresh(n_atoms, mode, args.repeats)
            print(
                f"{n_atoms:6d} atoms  {mode:5s}  {row['seconds']:8.3f} CPU s (user {row['user_seconds']:.3f}, "
                f"system {row['system_seconds']:.3f}; wall {row['wall_seconds']:.3f})  peak {row['peak_mb']:6.0f} "
                f"MiB (before the first step {row['idle_mb']:.0f})",
                flush=True,
            )
            rows.append(row)
    with atomic_output(args.out, "w") as handle:
        writer = csv.DictWriter(handle, ["n_atoms", "mode", "seconds", "peak_mb"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "seconds": f"{r['seconds']:.4f}", "peak_mb": f"{r['peak_mb']:.0f}"} for r in rows)
    plot(rows, args.out.with_suffix(".png"))
    for mode in ("train", "infer"):
        print(
            f"{mode}: slope of log(seconds) against log(n_atoms), {SLOPE_RANGE[0]}-{SLOPE_RANGE[1]} atoms: "
            f"{fitted_slope(rows, mode):.2f} (user time alone: {fitted_slope(rows, mode, 'user_seconds'):.2f})"
        )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
