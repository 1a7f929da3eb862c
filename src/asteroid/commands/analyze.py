"""`asteroid analyze`: read a predicted and a reference trajectory, find the continuation, write the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asteroid.analysis.checks import physical_report
from asteroid.analysis.energy import energy_comparison, gfn2_energies
from asteroid.analysis.predicted import continuation_from, load_predicted
from asteroid.analysis.report import save_report
from asteroid.arguments import CommandParser, non_negative
from asteroid.data import load_trajectory
from asteroid.errors import DataError
from asteroid.fileio import not_an_input, writable_output
from asteroid.runs import ROOT

MIN_REFERENCE_FRAMES = 10


def main(argv: list[str]) -> int:
    """`asteroid analyze pred.npz --reference data/ethanol_xtb.npz --out runs/analysis/ethanol`."""
    parser = CommandParser(
        prog="asteroid analyze",
        description="Is a predicted trajectory physical? Bond lengths, angles, dihedrals and radius of gyration "
        "against a reference trajectory (Jensen-Shannon divergence), the first unphysical frame, the "
        "coordinate error against the true continuation, optionally GFN2-xTB energies. Prints a table, "
        "writes report.json and PNG figures.",
    )
    parser.add_argument(
        "predicted", help="an `asteroid rollout` .npz (R (B, F, N, 3) or (F, N, 3), z, dt_fs) or any trajectory file"
    )
    parser.add_argument("--reference", required=True, help="the reference trajectory (any trajectory file)")
    parser.add_argument("--out", help="folder for report.json and the figures (default runs/analysis/<PREDICTED>)")
    parser.add_argument(
        "--energies",
        type=non_negative(int),
        default=0,
        metavar="K",
        help="GFN2-xTB single points of K predicted frames (seconds each for big molecules)",
    )
    parser.add_argument("--tensorboard", metavar="DIR", help="also write the figures to TensorBoard here")
    parser.add_argument("--dt-fs", type=float, help="fs between predicted frames, if the file does not say")
    parser.add_argument("--reference-dt-fs", type=float, help="fs between reference frames, if the file does not say")
    parser.add_argument(
        "--start",
        type=int,
        nargs="+",
        metavar="FRAME",
        help="reference frame of each predicted trajectory's start (its last history frame): the "
        "frames after it are the continuation (default: the rollout file's start_frame when "
        "its source is the reference)",
    )
    args = parser.parse_args(argv)
    predicted_path, reference_path = Path(args.predicted), Path(args.reference)
    # the output places first: a report computed for minutes and then refused is work lost
    out = writable_output(Path(args.out) if args.out else ROOT / "analysis" / predicted_path.stem, "folder")
    tensorboard = None if args.tensorboard is None else writable_output(args.tensorboard, "folder")
    for folder, option in ((out, "--out"), (tensorboard, "--tensorboard")):
        if folder is not None:
            not_an_input(folder, [("predicted file", predicted_path), ("reference file", reference_path)], option)
    predicted = load_predicted(predicted_path, args.dt_fs)
    reference = load_trajectory(reference_path, dt_fs=args.reference_dt_fs)
    if reference.n_atoms != predicted.R.shape[2]:
        raise DataError(
            f"{predicted_path}: {predicted.R.shape[2]} atoms, but the reference {reference_path} has "
            f"{reference.n_atoms}"
        )
    if not np.array_equal(reference.z, predicted.z):
        raise DataError(
            f"{predicted_path}: atomic numbers {predicted.z.tolist()} differ from those of the reference "
            f"{reference_path} ({reference.z.tolist()})"
        )
    if reference.n_frames < MIN_REFERENCE_FRAMES:
        raise DataError(
            f"{reference_path}: {reference.n_frames} frame(s); the reference distributions need at least "
            f"{MIN_REFERENCE_FRAMES}"
        )
    start = None
    if args.start is not None:
        start = np.asarray(args.start, np.int64)
    elif (
        predicted.start_frame is not None
        and predicted.source is not None
        and Path(predicted.source).resolve() == reference_path.resolve()
    ):
        start = predicted.start_frame
    continuation = None if start is None else continuation_from(reference, start, predicted, predicted_path)
    report = physical_report(predicted.R, predicted.z, predicted.dt_fs, reference.R, reference.dt_fs, continuation)
    if args.energies:
        report["energy"] = energy_comparison(
            predicted.R, predicted.z, reference.R, args.energies, gfn2_energies(reference_path, reference)
        )
    save_report(report, out, tensorboard)
    print(f"\nreport: {out / 'report.json'}, figures: {out}/*.png")
    return 0
