"""The report on the console and in files: report.json, the PNGs of `report_figures` and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from asteroid.analysis.energy import evenly_spaced
from asteroid.analysis.geometry import NAMES, UNITS
from asteroid.analysis.report_figures import report_figures
from asteroid.fileio import atomic_output
from asteroid.training.test_table import format_table


def _sample_rows(curve: dict, columns: dict[str, str], rows: int = 8) -> list[dict]:
    """A few rows (bins spread over the curve) of a binned curve's columns {key: header}, for the console."""
    picks = evenly_spaced(len(curve["time_fs"]), rows)
    return [
        {"time fs": curve["time_fs"][i], **{header: curve[key][i] for key, header in columns.items()}} for i in picks
    ]


def format_report(report: dict) -> str:
    """The report as console text: tables and one-line verdicts."""

    def num(value, fmt=".4g"):
        return "-" if value is None else format(value, fmt)

    p, r = report["predicted"], report["reference"]
    lines = [
        f"predicted: {p['trajectories']} trajectory(ies) x {p['frames']} frames, {p['dt_fs']:g} fs apart "
        f"({p['duration_fs'] / 1000:.4g} ps each); reference: {r['frames']} frames, {r['dt_fs']:g} fs apart "
        f"({r['duration_fs'] / 1000:.4g} ps); {report['atoms']} atoms",
        f"topology (reference frame 0): {len(report['topology']['bonds'])} bonds, "
        f"{len(report['topology']['angles'])} angles, {len(report['topology']['dihedrals'])} main dihedrals "
        f"({', '.join(report['topology']['dihedrals']) or 'none'})",
        "",
    ]
    unphysical = report["unphysical"]
    thresholds = unphysical["thresholds"]
    lines.append(
        f"unphysical frames (bond outside {thresholds['compress']}-{thresholds['stretch']} x reference "
        f"median, non-bonded atoms closer than {thresholds['overlap']} x covalent radii sum, non-finite):"
    )
    if not unphysical["any"]:
        lines.append(f"  none in {p['trajectories']} x {p['frames']} frames")
    for b, t in enumerate(unphysical["trajectories"]):
        if t["first_frame"] is not None:
            lines.append(
                f"  trajectory {b}: first at frame {t['first_frame']} ({t['first_time_fs']:g} fs): "
                f"{t['reason']}; {t['unphysical_frames']} of {p['frames']} frames unphysical"
            )
    rows = [
        {
            "quantity": f"{NAMES[name]} ({UNITS[name]})",
            "count": d["count"],
            "JSD mean": num(d["jsd_mean"]),
            "JSD max": num(d["jsd_max"]),
            "worst": d["worst"] or "-",
        }
        for name, d in report["distributions"].items()
    ]
    lines += ["", format_table(rows, "distributions against the reference (Jensen-Shannon divergence, base 2)")]
    columns = ("reference_mean", "reference_std", "predicted_mean", "predicted_std", "jsd")
    bond_rows = [
        {"what": item["label"], **{c.replace("_", " "): num(item[c]) for c in columns}}
        for name in ("bond_length", "radius_of_gyration")
        for item in report["distributions"][name]["items"]
    ]
    if bond_rows:
        lines += ["", format_table(bond_rows, "bond lengths and radius of gyration (Å)")]
    error = report["coordinate_error"]
    if error is None:
        lines += ["", "coordinate error: no continuation known (no true frames after the start)"]
    else:
        columns = {"kabsch_rmsd": "Kabsch RMSD A", "rmsd": "RMSD A"}
        table = [{k: num(v) for k, v in row.items()} for row in _sample_rows(error, columns)]
        lines += [
            "",
            format_table(table, f"coordinate error against the continuation ({error['frames']} frames), A"),
            f"independent reference frames: Kabsch RMSD {error['independent_kabsch_rmsd']:.4g} A (5th "
            f"percentile {error['decorrelation_level']:.4g} A), RMSD {error['independent_rmsd']:.4g} A; "
            + (
                "still correlated at the end"
                if error["decorrelation_time_fs"] is None
                else f"decorrelated after {error['decorrelation_time_fs']:g} fs"
            ),
        ]
    for name, d in report["deviation"].items():
        if d is None:
            continue
        last_mean = next((v for v in reversed(d["vs_reference_mean"]["rms"]) if v is not None), None)
        text = (
            f"{NAMES[name]} RMS deviation from the reference mean: {num(last_mean)} {UNITS[name]} at the end "
            f"(reference fluctuation {d['reference_fluctuation']:.4g})"
        )
        if d["vs_continuation"] is not None:
            text += f"; from the continuation: {num(d['vs_continuation']['rms'][0])} at first"
        lines.append(text)
    energy = report.get("energy")
    if energy and energy.get("samples"):
        lines += [
            "",
            f"GFN2-xTB energies (kcal/mol): predicted {num(energy['predicted_mean'], '.2f')} +- "
            f"{num(energy['predicted_std'], '.2f')} ({energy['samples']} frames, {energy['failed']} failed); "
            f"reference {energy['reference_mean']:.2f} +- {energy['reference_std']:.2f} "
            f"({energy['reference_source']}); JSD {num(energy['jsd'], '.3f')}",
        ] + ([f"  {energy['note']}"] if energy.get("note") else [])
    motion = report.get("motion")
    if motion is not None:
        rows = [
            {
                "quantity": label,
                "predicted": num(motion[key]["predicted"]),
                "reference": num(motion[key]["reference"]),
                "ratio": num(motion[key]["predicted"] / motion[key]["reference"], ".3f"),
            }
            for key, label in (
                ("mean_step", "mean step per frame (Å)"),
                ("kinetic_temperature", "kinetic temperature, finite differences (K)"),
            )
        ]
        lines += [
            "",
            format_table(rows, "motion at the predicted frame spacing"),
            f"vibrational spectrum overlap with the reference: {motion['spectrum']['overlap']:.3f}",
        ]
        times = motion["dihedral_correlation_time_fs"]
        if times["labels"]:
            lines.append(
                "dihedral autocorrelation time (fs), predicted / reference: "
                + ", ".join(
                    f"{label} {num(p, '.0f')} / {num(r, '.0f')}"
                    for label, p, r in zip(times["labels"], times["predicted"], times["reference"])
                )
            )
    options = report.get("rollout_options")
    if options:
        lines += [
            "",
            "rollout options: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in options.items()),
        ]
    target = report["target"]
    verdict = "MET" if target["met"] else "NOT MET: " + "; ".join(target["unmet"])
    ceilings = ", ".join(f"{NAMES[name]} {value:.3g}" for name, value in target["jsd_ceilings"].items())
    lines += [
        "",
        f"target (no unphysical frame; largest JSD within {ceilings}; mean step and temperature within "
        f"{target['motion_tolerance']:.0%}; spectrum overlap >= {target['spectrum_overlap_min']}): {verdict}",
    ]
    return "\n".join(lines)


def save_report(report: dict, out_dir: Path, tensorboard_dir: Path | None = None) -> None:
    """Print the console table; write out_dir/report.json and one PNG per figure (atomically), and the same figures
    to TensorBoard under analysis/<name> when tensorboard_dir is given."""
    out_dir = Path(out_dir)
    print(format_report(report))
    with atomic_output(out_dir / "report.json", "w") as handle:
        json.dump(report, handle, indent=1, allow_nan=False)
    figures = report_figures(report)
    for name, figure in figures.items():
        with atomic_output(out_dir / f"{name}.png") as handle:
            figure.savefig(handle, format="png", dpi=100)
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard_dir))
        for name, figure in figures.items():
            writer.add_figure(f"analysis/{name}", figure, close=False)
        for name, value in report_scalars(report).items():
            writer.add_scalar(f"analysis/{name}", value)
        writer.close()
    where = f"; TensorBoard: {tensorboard_dir}" if tensorboard_dir is not None else ""
    print(f"report written to {out_dir / 'report.json'} with {len(figures)} figures ({', '.join(figures)}){where}")


def report_scalars(report: dict) -> dict[str, float]:
    """The report's headline numbers, for TensorBoard: unphysical frames, the first one (-1: none), the largest JSD
    of each distribution, motion against the reference, and whether the targets are met."""
    trajectories = report["unphysical"]["trajectories"]
    first = [t["first_frame"] for t in trajectories if t["first_frame"] is not None]
    scalars = {
        "unphysical_fraction": float(report["unphysical"]["fraction"]),
        "first_unphysical_frame": float(min(first)) if first else -1.0,
        "target_met": float(report["target"]["met"]),
    }
    for name, summary in (report.get("distributions") or {}).items():
        if summary and summary.get("jsd_max") is not None:
            scalars[f"jsd_max/{name}"] = float(summary["jsd_max"])
    motion = report.get("motion") or {}
    for key in ("mean_step", "kinetic_temperature"):
        if key in motion and motion[key]["reference"]:
            scalars[f"{key}_ratio"] = float(motion[key]["predicted"] / motion[key]["reference"])
    if "spectrum" in motion:
        scalars["spectrum_overlap"] = float(motion["spectrum"]["overlap"])
    return scalars
