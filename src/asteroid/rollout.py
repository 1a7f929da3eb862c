"""Long forecasts: the model's predictions are fed back as its history, as many times as needed.

`asteroid rollout` rolls a trained model out from test windows (or a user's frames) and writes the predicted
trajectory as a file that mdtraj, ASE, VMD and PyMOL open.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import ase.io
import mdtraj as md
import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from asteroid.arguments import CommandParser, non_negative
from asteroid.checkpoints import read_checkpoint
from asteroid.data import load_trajectory
from asteroid.data.readers import AKMA_FS, PDB_TIME_STEP, element_topology
from asteroid.data.windows import rollout_spacing
from asteroid.errors import ConfigError, DataError, MissingTimestepError
from asteroid.fileio import atomic_output, writable_output
from asteroid.lightning_cli import from_checkpoint_or_config, load_weights
from asteroid.metrics import covalent_bonds
from asteroid.models.rollout import THERMOSTAT_COUPLING, rollout
from asteroid.module import DATA_KEY
from asteroid.runs import ROOT

# ---- `asteroid rollout` ----------------------------------------------------------------------------------------
OUTPUT_FORMATS = {
    ".xyz": "extended XYZ (ASE), Angstrom",
    ".pdb": "multi-model PDB with CONECT bonds (mdtraj)",
    ".dcd": "DCD (mdtraj), with <out>_topology.pdb",
    ".xtc": "XTC (mdtraj), with <out>_topology.pdb",
    ".h5": "MDTraj HDF5, topology included",
    ".npz": "numpy: R (B, F, N, 3) Angstrom, z, history, dt_fs, spacing, start_frame, source",
}
NEEDS_TOPOLOGY_FILE = {".dcd", ".xtc"}  # coordinates only: VMD, PyMOL and mdtraj need a structure beside them


@dataclass
class InitialConditions:
    """Where a rollout starts, and the true trajectory to judge it against."""

    history: np.ndarray  # (B, H, N, 3) Angstrom, frames `spacing` MD frames apart
    z: np.ndarray  # (N,)
    dt_fs: float  # between consecutive history (and predicted) frames
    start_frame: np.ndarray  # (B,) frame of `source` that is the last history frame
    source: str
    reference: np.ndarray  # (T, N, 3) the whole reference trajectory at its own frame spacing
    reference_dt_fs: float
    continuation: np.ndarray | None  # (B, F_c, N, 3) the true frames the rollout predicts, where the source has them
    box: np.ndarray | None = None  # (B, 3, 3) periodic cell of the last history frame, None for open boundaries


def start_from_test_split(datamodule, batch: int, spacing: int, n_frames: int) -> InitialConditions:
    """Histories of `batch` test windows spread evenly over the test split (the first window when batch is 1)."""
    test = datamodule.datasets["test"]
    if batch > len(test):
        raise ConfigError(f"--batch {batch}: the test split has only {len(test)} windows; ask for at most that many")
    picks = np.linspace(0, len(test) - 1, batch).round().astype(int)
    rows = test.index[picks]  # (B, 2) trajectory, window start
    meta = [datamodule.trajectories[t] for t in rows[:, 0]]
    if any(m["z"] != meta[0]["z"] or m["dt_fs"] != meta[0]["dt_fs"] for m in meta):
        raise ConfigError(
            f"--batch {batch}: the test windows span trajectories of different molecules or frame "
            "spacings; roll out one at a time (choose it with --data.sources)"
        )
    coordinates = [np.load(test.coordinate_files[t], mmap_mode="r") for t in rows[:, 0]]  # each (T, N, 3)
    last = rows[:, 1] + datamodule.layout.history_offsets[-1]  # (B,)
    following = [R[end + spacing :: spacing][:n_frames] for R, end in zip(coordinates, last)]
    kept = min(len(frames) for frames in following)  # one length for all: the trajectory's end cuts some short
    windows = [test[i] for i in picks]
    return InitialConditions(
        history=np.stack([w["history"].numpy() for w in windows]),
        z=np.asarray(meta[0]["z"]),
        dt_fs=spacing * meta[0]["dt_fs"],
        start_frame=last,
        source=meta[0]["source"],
        reference=coordinates[0],
        reference_dt_fs=meta[0]["dt_fs"],
        continuation=np.stack([frames[:kept] for frames in following]) if kept else None,
        box=np.stack([w["box"].numpy() for w in windows]) if meta[0]["periodic"] else None,
    )


def start_from_file(path: str, trained: dict, history: int, spacing: int) -> InitialConditions:
    """The last `history` frames of a user's file, `spacing` training frames apart, checked against what the
    checkpoint was trained on (`trained`: its data signature, `TrajectoryDataModule.signature`). Needs no training
    data: the report then judges the rollout against the file's own frames."""
    kinds = list(zip(trained["atoms"], trained["dt_fs"], trained["periodic"]))
    try:
        trajectory = load_trajectory(path)
    except MissingTimestepError:  # a file that does not state its frame spacing is taken to have the training data's
        trajectory = load_trajectory(path, dt_fs=kinds[0][1])
    if trained["heavy_atoms"]:
        trajectory = trajectory.select_atoms(np.flatnonzero(trajectory.z > 1))
    matching = [kind for kind in kinds if np.array_equal(kind[0], trajectory.z)]
    if not matching:
        raise DataError(
            f"{path}: its atoms (z = {trajectory.z.tolist()}) are not those the model was trained on "
            f"(z = {kinds[0][0]}); the model forecasts only its own molecule"
        )
    _, dt_fs, periodic = matching[0]
    box = trajectory.box if trajectory.box is not None and periodic else None
    if periodic and box is None:
        raise DataError(f"{path}: the model was trained on a periodic system and this file has no periodic cell")
    interval_fs = spacing * dt_fs  # time between history frames
    step = interval_fs / trajectory.dt_fs  # frames of the file between history frames
    if abs(step - round(step)) > 1e-6 or round(step) < 1:
        raise DataError(
            f"{path}: its frames are {trajectory.dt_fs:g} fs apart, but the model takes history frames "
            f"{interval_fs:g} fs apart ({spacing} frames of {dt_fs:g} fs), which is not a whole number "
            "of this file's frames"
        )
    step, needed = round(step), (history - 1) * round(step) + 1
    if trajectory.n_frames < needed:
        raise DataError(
            f"{path}: {trajectory.n_frames} frame(s), but the history needs {needed} (the last "
            f"{history} frames, {interval_fs:g} fs apart)"
        )
    return InitialConditions(
        history=np.asarray(trajectory.R[-needed::step])[None],
        z=trajectory.z,
        dt_fs=interval_fs,
        start_frame=np.array([trajectory.n_frames - 1]),
        source=str(path),
        reference=np.asarray(trajectory.R),
        reference_dt_fs=trajectory.dt_fs,
        continuation=None,
        box=None if box is None else box[-1:],
    )


def output_paths(out: Path, batch: int) -> list[Path]:
    """One file per initial condition (out_000.xyz, out_001.xyz, ...) except for .npz, which holds them all."""
    if out.suffix.lower() == ".npz" or batch == 1:
        return [out]
    width = max(3, len(str(batch - 1)))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix}") for i in range(batch)]


def molecule_topology(z: np.ndarray, positions: np.ndarray):
    """mdtraj Topology of one residue with the covalent bonds of `positions` (N, 3) Angstrom, so that PDB files get
    CONECT records and viewers draw the bonds the molecule started with, however the rollout moves it."""
    topology = element_topology(z)
    atoms = list(topology.atoms)
    for i, j in covalent_bonds(z, positions).T.tolist():
        topology.add_bond(atoms[i], atoms[j])
    return topology


def write_rollout(out: Path, predicted: np.ndarray, start: InitialConditions, spacing: int) -> list[Path]:
    """Write predicted (B, F, N, 3) Angstrom in the format of `out`'s suffix; returns the paths written.

    All files appear together when every one is complete (none of them if any write fails). A periodic start's
    cell goes into every frame, so viewers and `--init` see the box.
    """
    suffix = out.suffix.lower()
    B, F = predicted.shape[:2]
    times_fs = start.dt_fs * np.arange(1, F + 1)  # (F,) after the last history frame
    cells = [None] * B if start.box is None else np.broadcast_to(start.box, (B, 3, 3))  # Angstrom
    with ExitStack() as files:

        def temporary(path: Path, mode: str = "wb"):
            return files.enter_context(atomic_output(path, mode, suffix=path.suffix))

        if suffix == ".npz":
            periodic = {} if start.box is None else {"box": np.asarray(cells)}
            np.savez(
                temporary(out),
                R=predicted,
                z=start.z,
                history=start.history,
                dt_fs=start.dt_fs,
                spacing=spacing,
                start_frame=start.start_frame,
                source=start.source,
                time_fs=times_fs,
                **periodic,
            )
            return [out]
        paths = output_paths(out, len(predicted))
        if suffix == ".xyz":  # dt_fs in every comment line: `load_trajectory` (and so --init) reads the spacing back
            for path, frames, cell in zip(paths, predicted, cells):
                images = [
                    Atoms(
                        numbers=start.z,
                        positions=frame,
                        info={"time_fs": t, "dt_fs": start.dt_fs},
                        cell=cell,
                        pbc=cell is not None,
                    )
                    for frame, t in zip(frames, times_fs)
                ]
                ase.io.write(temporary(path, "w"), images, format="extxyz")
            return paths
        topology = molecule_topology(start.z, start.history[0, -1])
        for path, frames, cell in zip(paths, predicted, cells):
            trajectory = md.Trajectory(frames / 10.0, topology, time=times_fs / 1000.0)  # nm, ps
            if cell is not None:
                trajectory.unitcell_vectors = np.broadcast_to(cell / 10.0, (F, 3, 3))
            save_mdtraj(trajectory, temporary(path).name, start.dt_fs)
        if suffix in NEEDS_TOPOLOGY_FILE:  # the structure the rollout starts from
            paths.append(out.with_name(f"{out.stem}_topology.pdb"))
            save_mdtraj(md.Trajectory(start.history[0, -1:] / 10.0, topology), temporary(paths[-1]).name)
    return paths


def save_mdtraj(trajectory, path: str, dt_fs: float | None = None) -> None:
    """Save in the format of `path`'s suffix, with the time between frames where the format holds it: XTC and HDF5
    store frame times; into PDB goes a REMARK and into a DCD header its time step (mdtraj writes neither), which
    `load_trajectory` (and so `asteroid analyze`) reads back."""
    trajectory.save(path)
    suffix = Path(path).suffix.lower()
    if suffix == ".pdb":
        # mdtraj ends with END after the last ENDMDL, which ASE reads as one more, empty, model; viewers need neither
        lines = Path(path).read_text().splitlines(keepends=True)
        if lines and lines[-1] == "END\n":
            lines = lines[:-1]
        models = iter(range(1, len(lines) + 1))  # mdtraj counts models from 0; the PDB format and viewers from 1
        lines = [f"MODEL     {next(models):4d}\n" if line.startswith("MODEL") else line for line in lines]
        if dt_fs is not None:
            lines.insert(1 if lines and lines[0].startswith("REMARK") else 0, f"{PDB_TIME_STEP} {dt_fs:g}\n")
        Path(path).write_text("".join(lines))
    if suffix == ".dcd" and dt_fs is not None:
        with open(path, "r+b") as fh:  # header: NSAVC 1 (mdtraj's), DELTA the frame spacing in AKMA units
            fh.seek(44)
            fh.write(struct.pack("<f", dt_fs / AKMA_FS))


def repeat_starts(start: InitialConditions, samples: int) -> InitialConditions:
    """Each initial condition `samples` times in a row, for an ensemble of stochastic rollouts."""

    def repeat(array):
        return None if array is None else np.repeat(array, samples, axis=0)

    return dataclasses.replace(
        start,
        history=repeat(start.history),
        start_frame=repeat(start.start_frame),
        continuation=repeat(start.continuation),
        box=repeat(start.box),
    )


def physical_checks(
    predicted: np.ndarray, start: InitialConditions, out: Path, run_name: str, options: dict, checkpoint: str
) -> None:
    """`--report`: bond lengths, distributions and stability against the reference, in <out>_report/ and TensorBoard
    (runs/<run_name>/rollout)."""
    from asteroid.analysis import physical_report, save_report

    report = physical_report(
        predicted, start.z, start.dt_fs, np.asarray(start.reference), start.reference_dt_fs, start.continuation
    )
    report["rollout_options"] = options
    B, F = predicted.shape[:2]
    report["title"] = f"{Path(start.source).stem}: {B} x {F} frames rolled out by {checkpoint}"
    # one folder and one TensorBoard run per output file: pred.pdb and pred.dcd do not overwrite each other
    save_report(report, report_folder(out), ROOT / run_name / "rollout" / out.name)


def report_folder(out: Path) -> Path:
    """pred.xyz -> pred_xyz_report/ beside it."""
    return out.with_name(f"{out.stem}_{out.suffix.lstrip('.').lower()}_report")


def main(argv: list[str]) -> int:
    """`asteroid rollout --ckpt_path CKPT --frames 10000 --out pred.xyz`."""
    parser = CommandParser(
        prog="asteroid rollout",
        description="Iterate a trained model into a long trajectory: each forecast becomes part of the next "
        "history. Starts from test windows of the config's data (or --init FILE) and writes the "
        "--frames predicted frames (not the history). Other --data.X / --model.X options are passed "
        "to the config, as in `asteroid test`.",
        epilog="formats: " + "; ".join(f"{suffix} {what}" for suffix, what in OUTPUT_FORMATS.items()),
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="experiment config (may be repeated; default: the config stored in the checkpoint)",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="trained checkpoint (.ckpt), or `last`: the newest last.ckpt of the run (the config's, or --name's)",
    )
    parser.add_argument("--frames", type=int, default=1000, help="predicted frames per trajectory (default 1000)")
    parser.add_argument("--out", required=True, help=f"output file: {', '.join(OUTPUT_FORMATS)}")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="initial conditions rolled out at once: test windows spread evenly over the test split",
    )
    parser.add_argument(
        "--init",
        help="start from the last frames of this trajectory file instead of test windows "
        "(needs only the checkpoint: the training data may be absent; --report then "
        "judges the rollout against this file's frames)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: a small molecule's steps are too small to share, and on "
        "a busy machine two threads waiting for each other ran 10x slower)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        help="stochastic trajectories per initial condition (models trained with model.stochastic; "
        "their spread is the model's uncertainty)",
    )
    parser.add_argument(
        "--mean",
        action="store_true",
        help="roll out the forecast mean, not draws from the learned distribution around it",
    )
    parser.add_argument(
        "--keep-rigid-motion",
        action="store_true",
        help="keep each forecast's net translation and rotation (stripped by default, as the MD "
        "generator strips them; always kept in a periodic cell)",
    )
    parser.add_argument(
        "--thermostat",
        type=non_negative(float),
        default=None,
        metavar="FORECASTS",
        help="rescale sampled motion toward the training temperature with this coupling time, in "
        f"forecasts (1: every forecast at once; 0: off; default {THERMOSTAT_COUPLING:g} for "
        "stochastic models, off for others)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="physical checks against the reference trajectory, in <stem>_<suffix>_report/ beside --out (pred.xyz: "
        "pred_xyz_report/) and TensorBoard (runs/<name>/rollout/<out file name>)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)

    out = writable_output(args.out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(f"{out}: unknown output suffix {out.suffix!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    for name, value in (
        ("frames", args.frames),
        ("batch", args.batch),
        ("threads", args.threads),
        ("samples", args.samples),
    ):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if args.init is not None and args.batch != 1:
        raise ConfigError("--init gives one initial condition; --batch applies to test windows only")
    for config in args.config:
        if not Path(config).is_file():
            raise ConfigError(f"{config}: config file not found")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu")
    config_args = [arg for config in args.config for arg in ("--config", config)] + overrides

    cli, ckpt_path = from_checkpoint_or_config(config_args, args.ckpt_path)
    run_name = cli.config.name
    model, datamodule = load_weights(cli, ckpt_path)
    spacing = rollout_spacing(datamodule.layout)
    trained = read_checkpoint(ckpt_path).get(DATA_KEY) or {}
    if args.init is not None and "dt_fs" in trained:  # the checkpoint knows its atoms and spacing: no data needed
        start = start_from_file(args.init, trained, datamodule.history, spacing)
    else:
        datamodule.prepare_data()
        datamodule.setup("test")
        datamodule.check_signature(trained, str(ckpt_path))  # now with the atoms
        if args.init is not None:  # a checkpoint from before the signature held the spacing
            start = start_from_file(args.init, datamodule.signature(), datamodule.history, spacing)
        else:
            start = start_from_test_split(datamodule, args.batch, spacing, args.frames)
    sample = not args.mean and model.net.noise is not None
    if args.samples > 1:
        if not sample:
            raise ConfigError(
                f"--samples {args.samples}: {ckpt_path} was trained without model.stochastic (or "
                "--mean is set), so every sample would be the same trajectory"
            )
        start = repeat_starts(start, args.samples)
    coupling = args.thermostat if args.thermostat is not None else THERMOSTAT_COUPLING if sample else 0.0

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    history = torch.as_tensor(start.history, dtype=torch.float32, device=device)  # (B, H, N, 3)
    B, _, N, _ = history.shape
    z = torch.as_tensor(start.z, device=device).expand(B, N)
    mask = torch.ones(B, N, dtype=torch.bool, device=device)
    with tqdm(
        total=B * args.frames,
        unit="frame",
        desc=f"rollout {B} x {args.frames}",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=args.no_progress,
    ) as bar:
        started, cpu_started = time.perf_counter(), time.process_time()
        box = None if start.box is None else torch.as_tensor(start.box, device=device)
        predicted = rollout(
            model.net.to(device),
            history,
            z,
            mask,
            args.frames,
            lambda k: bar.update(B * k),
            box,
            sample=sample,
            keep_rigid_motion=args.keep_rigid_motion,
            thermostat_coupling=coupling or None,
        )
        predicted = predicted.cpu().numpy()  # (B, F, N, 3)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    paths = write_rollout(out, predicted, start, spacing)
    names = ", ".join(map(str, paths)) if len(paths) <= 3 else f"{paths[0]} ... {paths[-1]}"
    print(
        f"{names}: {B} x {args.frames} frames of {N} atoms, {start.dt_fs:g} fs apart "
        f"({args.frames * start.dt_fs / 1000:g} ps each), continuing frame(s) "
        f"{', '.join(map(str, start.start_frame[:3]))}{' ...' if B > 3 else ''} of {start.source}"
    )
    print(
        f"rollout: {B * args.frames} frames in {seconds:.2f} s ({cpu_seconds:.2f} s CPU), "
        f"{B * args.frames / seconds:.0f} frames/s ({args.device}, {args.threads} thread(s))"
    )
    options = {
        "sampled": sample,
        "samples_per_start": args.samples,
        "bond_constraints": model.net.bonded is not None and model.net.bonded.fitted,
        "rigid_motion_stripped": not args.keep_rigid_motion and start.box is None,
        "thermostat_coupling_forecasts": coupling or None,
    }
    print("rollout options: " + ", ".join(f"{key} {value}" for key, value in options.items()))
    if args.report:
        physical_checks(predicted, start, out, run_name, options, str(ckpt_path))
    return 0
