"""`asteroid benchmark`: time per simulated picosecond of the GFN2-xTB MD that made the data and of the model.

The fair unit is a simulated picosecond: the MD needs 1000 / 0.5 = 2000 velocity-Verlet steps for it whatever
the output spacing; the model needs one predicted frame per `spacing` data frames (200 at the shipped spacing
of 10). In one process, for the same molecule: the MD runs the generator's own code path (`asteroid.simulation.xtb`:
its tblite calculator, ASE's velocity Verlet, its OpenMP guard) on the CPU; the model rolls out 1 and B
independent trajectories on the chosen device, with the same number of threads. Speed is printed beside the
checkpoint's own test MSE (its run's test_metrics.csv), so that it is never shown without the accuracy it buys, and
beside the FLOPs of one forecast and of one simulated picosecond (torch's FLOP counter: matrix products), which do not
depend on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from asteroid.arguments import CommandParser, positive
from asteroid.data.windows import rollout_spacing
from asteroid.errors import ConfigError
from asteroid.fileio import atomic_output, not_an_input, writable_output
from asteroid.models.rollout import default_thermostat
from asteroid.simulation.xtb import read_structure
from asteroid.studies.speed import (
    CLOCKS,
    checkpoint_test_mse,
    config_molecule,
    cpu_name,
    forecast_flops,
    load_net,
    md_seconds_per_ps,
    model_seconds_per_ps,
    thermal_speed,
    water_cluster,
    window_histories,
)


def benchmark_case(
    name: str,
    atoms: Atoms,
    net,
    spacing: int,
    data_fs: float,
    weights: str,
    args,
    device: torch.device,
    mse: float | None,
    starts: np.ndarray | None = None,
) -> dict:
    """One molecule: MD and model timed, their ratios, the model's FLOPs and the test MSE of its checkpoint."""
    frame_fs = spacing * data_fs
    if weights == "untrained":
        # An untrained net forecasts in units of its displacement scale (1 Angstrom until fitted): give it the
        # RMS ballistic motion of the history, so that its rollout keeps the molecule's size and neighbours.
        per_frame = frame_fs * float(np.sqrt(np.mean(thermal_speed(atoms) ** 2)))  # Angstrom
        net.set_displacement_scale(per_frame * torch.arange(1, net.horizon + 1, dtype=torch.float32, device=device))
    # each timing takes a while (a minute and more for a large molecule): say what is being timed
    print(f"{name}: timing GFN2-xTB MD ({args.repeats} x {args.md_steps} steps)", file=sys.stderr, flush=True)
    md = md_seconds_per_ps(atoms, args.md_steps, args.md_warmup, args.repeats, args.threads, args.clock)
    print(f"{name}: timing the model's rollout at batch 1, then {args.batch}", file=sys.stderr, flush=True)
    single, single_split = model_seconds_per_ps(
        net, atoms, 1, args.forecasts, frame_fs, device, args.repeats, args.clock, starts, args.compile
    )
    batched, batched_split = model_seconds_per_ps(
        net, atoms, args.batch, args.forecasts, frame_fs, device, args.repeats, args.clock, starts, args.compile
    )
    flops = forecast_flops(net, atoms, device)
    flops_per_ps = flops * 1000.0 / (net.horizon * frame_fs)
    result = dict(
        molecule=name,
        n_atoms=len(atoms),
        spacing=spacing,
        device=str(device),
        md_seconds_per_ps=md,
        model_seconds_per_ps=single,
        model_batched_seconds_per_ps=batched,
        batch=args.batch,
        speedup=md / single,
        speedup_batched=md / batched,
        flops_per_forecast=flops,
        flops_per_ps=flops_per_ps,
        test_mse=mse,
        weights=weights,
        threads=args.threads,
        clock=args.clock,
        compiled=args.compile,
        # what was timed: the rollout `asteroid rollout` runs by default for this model, from its test windows
        # (trained, with its data here) or from ballistic histories
        starts="test windows" if starts is not None else "ballistic",
        bond_constraints=net.imposes_bond_lengths,
        stochastic=net.noise is not None,
        thermostat=default_thermostat(net),
        # milliseconds of one forecast of 1 and of B trajectories, per part
        forecast_ms=single_split,
        batched_forecast_ms=batched_split,
        # the rollout's own rates: frames and simulated picoseconds per second, of all trajectories at once
        frames_per_second=1000.0 / (frame_fs * single),
        ps_per_second=1.0 / single,
        batched_frames_per_second=1000.0 / (frame_fs * batched),
        batched_ps_per_second=1.0 / batched,
    )
    print(
        f"{name} ({len(atoms)} atoms, spacing {spacing} = {frame_fs:g} fs): MD {md:.4g} s/ps, model {single:.4g} "
        f"s/ps (batch 1), {batched:.4g} s/ps per trajectory (batch {args.batch}); speedup {md / single:.3g}x, "
        f"{md / batched:.3g}x batched; {flops / 1e6:.3g} MFLOP per forecast, {flops_per_ps / 1e6:.3g} MFLOP per "
        f"ps; test MSE {format_mse(mse)} Å²; rollout {result['frames_per_second']:.4g} frames/s = "
        f"{result['ps_per_second']:.3g} ps/s (batch 1), {result['batched_frames_per_second']:.4g} frames/s = "
        f"{result['batched_ps_per_second']:.3g} ps/s (batch {args.batch}, all trajectories)",
        flush=True,
    )
    for batch, split in ((1, single_split), (args.batch, batched_split)):
        parts = ", ".join(f"{part} {ms:.3g}" for part, ms in split.items())
        print(f"  one forecast at batch {batch}, ms: {parts}", flush=True)
    return result


def format_mse(mse: float | None) -> str:
    return "n/a" if mse is None else f"{mse:.3g}"


def markdown_table(results: list[dict]) -> str:
    """The results as a markdown table, smallest molecule first."""
    header = (
        "| molecule | atoms | spacing | MD s/ps | model s/ps (batch 1) | model s/ps per trajectory (batch B) "
        "| B | speedup | speedup (batch B) | rollout frames/s (batch 1 / B) | MFLOP per forecast | MFLOP per ps "
        "| test MSE (Å²) | weights |\n" + "|---" * 14 + "|"
    )
    rows = [
        f"| {r['molecule']} | {r['n_atoms']} | {r['spacing']} | {r['md_seconds_per_ps']:.3g} "
        f"| {r['model_seconds_per_ps']:.3g} | {r['model_batched_seconds_per_ps']:.3g} | {r['batch']} "
        f"| {r['speedup']:.3g} | {r['speedup_batched']:.3g} "
        f"| {r.get('frames_per_second', float('nan')):.4g} / {r.get('batched_frames_per_second', float('nan')):.4g} "
        f"| {r['flops_per_forecast'] / 1e6:.3g} "
        f"| {r['flops_per_ps'] / 1e6:.3g} | {format_mse(r['test_mse'])} | {r['weights']} |"
        for r in sorted(results, key=lambda r: r["n_atoms"])
    ]
    return "\n".join([header, *rows])


def main(argv: list[str]) -> int:
    """`asteroid benchmark --config experiments/ethanol.yaml --ckpt_path CKPT --molecules aspirin benzene`."""
    parser = CommandParser(
        prog="asteroid benchmark",
        description="Time per simulated picosecond of GFN2-xTB MD (the generator's code path, CPU) and of the "
        "model's rollout (batch 1 and batch B), their ratios, and the model's FLOPs and its checkpoint's test MSE "
        "beside them.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="experiment config: its molecule, architecture and spacing "
        "(default with --ckpt_path: the config stored in the checkpoint)",
    )
    parser.add_argument(
        "--ckpt_path",
        help="trained checkpoint, or `last`: the newest last.ckpt of the config's run "
        "(default: the config's net untrained; the speed is the same)",
    )
    parser.add_argument("--name", help="without --config: the run whose newest last.ckpt `--ckpt_path last` is")
    parser.add_argument(
        "--more-checkpoints",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more trained checkpoints, each timed with the molecule and config it stores (e.g. aspirin's beside "
        "ethanol's), after --ckpt_path's",
    )
    parser.add_argument(
        "--molecules",
        nargs="+",
        default=[],
        help="more molecules, each with <experiments>/<name>.yaml and untrained weights",
    )
    parser.add_argument("--experiments", type=Path, default=Path("experiments"), help="where --molecules' configs are")
    parser.add_argument(
        "--structures",
        nargs="+",
        type=Path,
        default=[],
        help="other structure files (ASE-readable), with the net and spacing of --config",
    )
    parser.add_argument(
        "--water",
        nargs="+",
        type=positive(int),
        default=[],
        metavar="MOLECULES",
        help="water clusters of these many molecules, with the net and spacing of --config",
    )
    parser.add_argument("--batch", type=positive(int), default=256, help="independent trajectories (default 256)")
    parser.add_argument(
        "--forecasts", type=positive(int), default=8, help="whole forecasts per timed rollout (default 8)"
    )
    parser.add_argument("--md-steps", type=positive(int), default=200, help="timed MD steps (default 200)")
    parser.add_argument("--md-warmup", type=int, default=5, help="untimed MD steps first (default 5)")
    parser.add_argument(
        "--repeats", type=positive(int), default=3, help="timings of each, the median reported (default 3)"
    )
    parser.add_argument("--device", default="cpu", help="device of the model (default cpu; the MD runs on the CPU)")
    parser.add_argument(
        "--threads",
        type=positive(int),
        default=1,
        help="CPU threads of the MD (OpenMP) and of the model (torch), the same for both (default 1)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time (default), or the process's CPU time: fairer on a shared machine, "
        "the same as wall time on an idle one with one thread",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile each forecast into one call, as asteroid rollout --compile does (a minute per batch shape, in "
        "the untimed warm-up; the same forecasts up to float rounding)",
    )
    parser.add_argument("--json", type=Path, help="write the results here: a list of one object per molecule")
    args = parser.parse_args(argv)

    if args.json:
        writable_output(args.json)  # before the minutes of timing, not after
        inputs = [("checkpoint", path) for path in (args.ckpt_path, *(args.more_checkpoints or []))]
        not_an_input(args.json, inputs + [("config file", args.config)], "--json")
    if args.config is None and args.ckpt_path is None and not args.molecules and not args.more_checkpoints:
        raise ConfigError("nothing to benchmark: give --ckpt_path, --config and/or --molecules")
    if args.config is None and args.ckpt_path is None and (args.structures or args.water):
        raise ConfigError("--structures and --water go with --ckpt_path or --config (whose net and spacing they use)")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device {args.device}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device on this machine")
    if args.clock == "cpu" and device.type != "cpu":
        raise ConfigError(f"--clock cpu measures CPU work; time the model on {device} with --clock wall")
    torch.set_num_threads(args.threads)
    print(
        f"model on {device}, MD on the CPU ({cpu_name()}); {args.threads} thread(s), {args.clock} "
        f"clock; MD {args.md_steps} steps x {args.repeats}; model {args.forecasts} forecasts x {args.repeats}, "
        f"batch 1 and {args.batch}{', compiled' if args.compile else ''}",
        flush=True,
    )

    results = []
    own = args.config is not None or args.ckpt_path is not None
    configs = (
        ([(args.config, args.ckpt_path)] if own else [])
        + [(None, path) for path in args.more_checkpoints]
        + [(args.experiments / f"{name}.yaml", None) for name in args.molecules]
    )
    for index, (config, ckpt_path) in enumerate(configs):
        net, datamodule, ckpt_path = load_net(config, ckpt_path, device, args.name if index == 0 else None)
        name, atoms, data_fs = config_molecule(datamodule)
        if datamodule.heavy_atoms:
            raise ConfigError(f"{config}: a heavy-atom model has no MD of its own atoms to compare with")
        spacing = rollout_spacing(datamodule.layout)
        weights = ckpt_path or "untrained"
        mse = checkpoint_test_mse(ckpt_path)
        if ckpt_path is not None and mse is None:
            print(f"note: {ckpt_path} has no test_metrics.csv in its run folder: test_mse is null")
        starts = None if ckpt_path is None else window_histories(datamodule, args.batch, spacing)
        results.append(benchmark_case(name, atoms, net, spacing, data_fs, weights, args, device, mse, starts))
        if index == 0 and own:
            others = [(path.stem, read_structure(path)) for path in args.structures] + [
                (f"water{n}", water_cluster(n)) for n in args.water
            ]
            for other, structure in others:
                results.append(benchmark_case(other, structure, net, spacing, data_fs, weights, args, device, None))
    print()
    print(markdown_table(results))
    if args.json:
        with atomic_output(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
            handle.write("\n")
        print(f"\nresults written to {args.json}")
    return 0
