"""`asteroid simulate`: generate a GFN2-xTB MD trajectory (the engine is asteroid.simulation.md)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from ase.io import write

from asteroid.arguments import CommandParser
from asteroid.config import data_sources
from asteroid.data.sources import TrajectorySource, generate, generated
from asteroid.errors import ConfigError
from asteroid.fileio import not_an_input, writable_output
from asteroid.simulation.md import run_summary, simulate
from asteroid.simulation.smiles import structure_from_smiles
from asteroid.simulation.xtb import BUILTIN_MOLECULES, TEMPERATURE_K, TIMESTEP_FS


def main(argv: list[str]) -> int:
    """`asteroid simulate --molecule ethanol --frames 20000 --out data/ethanol_xtb.npz`."""
    parser = CommandParser(
        prog="asteroid simulate",
        description="GFN2-xTB molecular dynamics (tblite + ASE) in the MD17 protocol, written as MD17-format .npz: "
        "R (frames, atoms, 3) Angstrom, z, E kcal/mol, F kcal/mol/Angstrom (all float64), dt_fs.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--molecule", help=f"built-in MD17 molecule: {', '.join(BUILTIN_MOLECULES)}")
    what.add_argument("--structure", help="starting structure of any other molecule (an ASE-readable file, e.g. .xyz)")
    what.add_argument("--smiles", help="any other molecule as SMILES, embedded in 3D by RDKit (pip install rdkit)")
    what.add_argument(
        "--config",
        help="an experiment config: make each trajectory of its data.sources that is missing, as `asteroid fit` "
        "makes it before training (each source's path and frames; the other options are the defaults)",
    )
    parser.add_argument("--out", help="output .npz (not with --config)")
    parser.add_argument(
        "--processes", type=int, default=1, help="with --config: trajectories made at once, one core each (default 1)"
    )
    parser.add_argument("--frames", type=int, default=20000, help="frames to record (default 20000)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=TEMPERATURE_K,
        help=f"temperature in K (default {TEMPERATURE_K:g}, as MD17)",
    )
    parser.add_argument(
        "--timestep", type=float, default=TIMESTEP_FS, help=f"MD time step in fs (default {TIMESTEP_FS:g}, as MD17)"
    )
    parser.add_argument("--every", type=int, default=1, help="record every this many steps (default 1)")
    parser.add_argument("--thermalize-steps", type=int, default=500, help="Langevin steps before NVE (default 500)")
    parser.add_argument("--friction", type=float, default=0.02, help="Langevin friction in 1/fs (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and the thermostat")
    parser.add_argument(
        "--keep-rotation",
        action="store_true",
        help="keep the net linear and angular momentum the thermostat leaves (default: remove them)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint <out>.partial.npz")
    parser.add_argument("--checkpoint-every", type=int, default=2000, help="steps between checkpoints (default 2000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.config is not None:
        if args.out is not None:
            parser.error("--out is each source's path with --config; give one or the other")
        if args.processes < 1:
            parser.error(f"--processes must be at least 1, got {args.processes}")
        return make_missing(args.config, args.processes)
    if args.out is None:
        parser.error("--out is required (or --config)")
    not_an_input(writable_output(args.out), [("--structure file", args.structure)])
    structure = args.structure
    if args.smiles is not None:  # the embedded start is kept beside the output: the run's structure, reproducible
        structure = Path(args.out).with_suffix(".start.xyz")
        structure.parent.mkdir(parents=True, exist_ok=True)
        write(structure, structure_from_smiles(args.smiles), comment=f"SMILES {args.smiles}: RDKit ETKDG + MMFF94")
    report = simulate(
        args.out,
        molecule=args.molecule,
        structure=structure,
        frames=args.frames,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        every=args.every,
        thermalize_steps=args.thermalize_steps,
        friction=args.friction,
        seed=args.seed,
        keep_rotation=args.keep_rotation,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    print(run_summary(report))
    return 0


def make_missing(config: str, processes: int) -> int:
    """Make every trajectory of `config`'s data sources that is missing, `processes` at a time (each resumes from
    its checkpoint where one was interrupted): the data of a run of many molecules before it trains."""
    sources = []
    for entry in data_sources(config):
        try:
            sources.append(TrajectorySource(**entry))
        except TypeError as error:
            raise ConfigError(f"{config}: data.sources entry {entry}: {error}") from None
    missing = [s for s in sources if not Path(s.path).exists() and generated(s)]
    print(f"{config}: {len(sources) - len(missing)} of {len(sources)} trajectories there, {len(missing)} to make")
    # spawn: a fresh interpreter per worker, not a fork of one that has loaded torch and OpenMP
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        made = [pool.submit(_make, source) for source in missing]
        for done, future in enumerate(as_completed(made), 1):
            print(f"[{done}/{len(missing)}] {future.result()}", flush=True)
    return 0


def _make(source: TrajectorySource) -> str:
    return run_summary(generate(source, progress=False)).split("\n")[0]
