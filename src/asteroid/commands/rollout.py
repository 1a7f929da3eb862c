"""Long forecasts: the model's predictions are fed back as its history, as many times as needed.

`asteroid rollout` rolls a trained model out from test windows (or a user's frames) and writes the predicted
trajectory as a file that mdtraj, ASE, VMD and PyMOL open.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asteroid.api.forecaster import load_with_data
from asteroid.arguments import CommandParser, existing_file, non_negative, positive
from asteroid.data.starts import (
    InitialConditions,
    repeat_starts,
    start_from_file,
    start_from_test_split,
    with_reference,
)
from asteroid.data.windows import rollout_spacing
from asteroid.data.writers import OUTPUT_FORMATS, write_rollout
from asteroid.errors import ConfigError
from asteroid.fileio import free_disk, not_an_input, scratch_array, writable_output
from asteroid.models.rollout import THERMOSTAT_COUPLING, rollout, thermostat_coupling
from asteroid.runs import ROOT


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


# Bytes one coordinate (x, y or z of an atom in a frame) takes on disk in each output format, and in memory while
# the writer holds one trajectory (the frames of all of them wait on disk, in `scratch_array`): measured on ethanol
# rollouts of 2 x 20,000 and 2 x 100,000 frames, rounded up (the PDB writer makes text of a whole trajectory).
FORMAT_BYTES_PER_VALUE = {  # suffix: (disk, memory)
    ".npz": (4.2, 8),
    ".h5": (3.3, 12),
    ".dcd": (5, 12),
    ".xtc": (6.2, 12),
    ".xyz": (21, 4),
    ".pdb": (29, 120),
}
SCRATCH_BYTES_PER_VALUE = 4  # the float32 frames of every trajectory, until written
# Trajectories rolled out at once: the network's working memory grows with their number (at 2000 ethanol
# trajectories it was 0.6 GB), its speed no more past a few hundred (docs/results/benchmark.md, batch 256).
CHUNK = 256


def available_memory() -> int:
    """Bytes of memory this process may still take (MemAvailable; the machine's total where that is unknown)."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size_text(size: float) -> str:
    """135 kB, 3.24 GB: three significant digits in the unit that suits."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size / 1e3:.3g} kB"


def check_resources(out: Path, trajectories: int, frames: int, atoms: int, samples: int) -> None:
    """Refuse up front, with the estimate, a rollout whose frames would not fit on the output's disk (they go to a
    scratch file, then to the output) or whose one trajectory would not fit in memory while it is written."""
    values = frames * atoms * 3  # of one trajectory
    request = (
        f"{trajectories} {'trajectory' if trajectories == 1 else 'trajectories'} ({trajectories // samples} start(s) "
        f"x --samples {samples}) x --frames {frames}"
    )
    disk_bytes, memory_bytes = FORMAT_BYTES_PER_VALUE[out.suffix.lower()]
    needed = trajectories * values * (SCRATCH_BYTES_PER_VALUE + disk_bytes)
    free = free_disk(out.parent)
    if needed > 0.9 * free:
        raise ConfigError(
            f"{request} of {atoms} atoms need about {size_text(needed)} of disk while written, and "
            f"{out.parent} has {size_text(free)} free: ask for fewer frames or samples, or another --out place"
        )
    needed, available = memory_bytes * values, available_memory()
    if needed > 0.8 * available:
        raise ConfigError(
            f"--frames {frames} of {atoms} atoms need about {size_text(needed)} of memory per trajectory while "
            f"written, and {size_text(available)} are free: ask for fewer frames (several runs continue each other "
            "through --init)"
        )


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
        type=existing_file("config file"),
        help="experiment config (may be repeated; default: the config stored in the checkpoint)",
    )
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="trained checkpoint (.ckpt), or `last`: the newest last.ckpt of the run (the config's, or --name's)",
    )
    parser.add_argument(
        "--frames", type=positive(int), default=1000, help="predicted frames per trajectory (default 1000)"
    )
    parser.add_argument("--out", required=True, help=f"output file: {', '.join(OUTPUT_FORMATS)}")
    parser.add_argument(
        "--batch",
        type=positive(int),
        default=1,
        help="initial conditions rolled out at once: test windows spread evenly over the test split",
    )
    parser.add_argument(
        "--init",
        help="start from the last frames of this trajectory file instead of test windows "
        "(needs only the checkpoint: the training data may be absent; --report then "
        "judges the rollout against this file's frames)",
    )
    parser.add_argument(
        "--dt-fs",
        type=positive(float),
        help="with --init: fs between the file's frames, where the file does not say (a file of one structure "
        "needs none)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--threads",
        type=positive(int),
        default=1,
        help="torch CPU threads (default 1: a small molecule's steps are too small to share, and on "
        "a busy machine two threads waiting for each other ran 10x slower)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    parser.add_argument(
        "--samples",
        type=positive(int),
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
    parser.add_argument(
        "--reference",
        type=existing_file("reference trajectory"),
        help="with --report: judge the rollout against this trajectory of the same molecule (e.g. a longer MD run "
        "than the training data, so that the reference's own halves agree) instead of the start's source",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each forecast into one call (about a minute first; ethanol on one CPU thread: 1.1 "
        "against 6-8 ms a forecast at --batch 1, so it pays after about 10,000 forecasts; needs a C++ compiler)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)
    if args.reference is not None and not args.report:
        raise ConfigError("--reference is what --report judges against; add --report")

    out = writable_output(args.out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise ConfigError(f"{out}: unknown output suffix {out.suffix!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if args.dt_fs is not None and args.init is None:
        raise ConfigError("--dt-fs is the time between the --init file's frames; add --init")
    if args.init is not None and args.batch != 1:
        raise ConfigError("--init gives one initial condition; --batch applies to test windows only")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu")
    config_args = [arg for config in args.config for arg in ("--config", config)] + overrides

    model, datamodule = load_with_data(args.ckpt_path, config_args, list(parser._option_string_actions))
    ckpt_path, trained = model.checkpoint, model.trained
    inputs = [("checkpoint", ckpt_path), ("--init file", args.init), ("--reference file", args.reference)]
    inputs += [("config file", config) for config in args.config]
    inputs += [("training data file", source.path) for source in datamodule.sources]
    not_an_input(out, inputs)
    spacing = rollout_spacing(datamodule.layout)
    if args.init is not None and trained.atoms:  # the checkpoint knows its atoms: no data needed
        start = start_from_file(args.init, trained, datamodule.history, spacing, args.dt_fs)
    else:
        datamodule.prepare_data()
        datamodule.setup("test")
        datamodule.check_signature(trained, ckpt_path)  # now with the atoms
        if args.init is not None:  # a checkpoint from before the record: its atoms from the data
            start = start_from_file(args.init, datamodule.signature(), datamodule.history, spacing, args.dt_fs)
        else:
            start = start_from_test_split(datamodule, args.batch, spacing, args.frames)
    if args.reference is not None:
        start = with_reference(start, args.reference)
    elif args.report and start.from_structure:  # 71 frames of its own making would pass any check
        raise ConfigError(
            f"--report: {args.init} is one structure, with no trajectory to judge the rollout against; pass "
            "--reference FILE (an MD trajectory of the molecule)"
        )
    sample = not args.mean and model.stochastic
    if args.samples > 1:
        if not sample:
            raise ConfigError(
                f"--samples {args.samples}: {ckpt_path} was trained without model.stochastic (or "
                "--mean is set), so every sample would be the same trajectory"
            )
        start = repeat_starts(start, args.samples)
    coupling = thermostat_coupling(model.net, sample, args.thermostat)
    unseen = trained.transferable  # a model for many molecules: ranges and temperature from the history
    check_resources(out, len(start.history), args.frames, len(start.z), args.samples)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    history = torch.as_tensor(start.history, dtype=torch.float32, device=device)  # (B, H, N, 3)
    B, _, N, _ = history.shape
    z = torch.as_tensor(start.z, device=device).expand(B, N)
    mask = torch.ones(B, N, dtype=torch.bool, device=device)
    with (
        tqdm(
            total=B * args.frames,
            unit="frame",
            desc=f"rollout {B} x {args.frames}",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=args.no_progress,
        ) as bar,
        scratch_array(out.parent, (B, args.frames, N, 3)) as predicted,  # (B, F, N, 3) on disk, not in memory
    ):
        started, cpu_started = time.perf_counter(), time.process_time()
        box = None if start.box is None else torch.as_tensor(start.box, device=device)
        net = model.net.to(device)
        for first in range(0, B, CHUNK):  # independent trajectories: the network's memory grows with their number
            part = slice(first, first + CHUNK)
            rollout(
                net,
                history[part],
                z[part],
                mask[part],
                args.frames,
                lambda k, b=len(history[part]): bar.update(b * k),
                None if box is None else box[part],
                sample=sample,
                keep_rigid_motion=args.keep_rigid_motion,
                thermostat_coupling=coupling,
                molecule_from_history=unseen,
                into=predicted[part],
                compiled=args.compile,
            )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        bar.close()
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
            "bond_constraints": model.net.imposes_bond_lengths,
            "molecule_from_history": unseen,
            "rigid_motion_stripped": not args.keep_rigid_motion and start.box is None,
            "thermostat_coupling_forecasts": coupling,
            "reference": str(args.reference or start.source),
        }
        print("rollout options: " + ", ".join(f"{key} {value}" for key, value in options.items()))
        if args.report:
            physical_checks(predicted, start, out, model.name, options, ckpt_path)
    return 0
