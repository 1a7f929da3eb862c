"""The report's figures, drawn from the report dict alone: coordinate error and deviation against time,
predicted against reference histograms of every bond, angle, dihedral and the radius of gyration, and the
vibrational spectra."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from asteroid.analysis.geometry import NAMES, UNITS


def _histogram_grid(distribution: dict, unit: str) -> Figure:
    """One panel per bond / angle / dihedral: predicted and reference histograms (densities)."""
    items = [item for item in distribution["items"] if item["jsd"] is not None]
    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    figure = Figure(figsize=(3.2 * cols, 2.4 * rows), layout="constrained")
    for ax, item in zip(figure.subplots(rows, cols, squeeze=False).flat, items):
        edges = np.linspace(*item["range"], len(item["predicted"]) - 1)
        # what falls outside the reference's range drawn as one wide bin on each side, so that a predicted
        # distribution mostly outside it does not look flat
        lo, hi = edges[0], edges[-1]
        tail = 0.15 * (hi - lo)
        edges = np.concatenate([[lo - tail], edges, [hi + tail]])
        for key, style in (("reference", dict(color="k")), ("predicted", dict(color="C1", linestyle="--"))):
            fractions = np.asarray(item[key])
            ax.stairs(fractions / np.diff(edges), edges, label=key, **style)
        ax.axvspan(lo - tail, lo, color="0.9", zorder=0)
        ax.axvspan(hi, hi + tail, color="0.9", zorder=0)
        outside = item["predicted"][0] + item["predicted"][-1]
        ax.set_title(
            f"{item['label']}  JSD {item['jsd']:.3f}" + (f", {outside:.1%} outside" if outside else ""),
            fontsize="small",
        )
        ax.set_xlabel(unit, fontsize="small")
    for ax in list(figure.axes)[len(items) :]:
        ax.set_visible(False)
    figure.axes[0].legend(fontsize="small")
    return figure


def report_figures(report: dict) -> dict[str, Figure]:
    """name -> Figure, drawn from the report dict alone."""
    figures = {}
    error = report["coordinate_error"]
    if error is not None:
        figure = Figure(figsize=(9, 4), layout="constrained")
        ax = figure.add_subplot()
        for key, label, colour in (("kabsch_rmsd", "Kabsch RMSD", "C0"), ("rmsd", "RMSD", "C1")):
            ax.plot(
                error["time_fs"],
                [np.nan if v is None else v for v in error[key]],
                marker="o",
                markersize=3,
                color=colour,
                label=label,
            )
            ax.axhline(error[f"independent_{key}"], color=colour, linestyle=":", label=f"{label}, independent frames")
        ax.axhline(
            error["decorrelation_level"],
            color="C0",
            linestyle="-.",
            linewidth=0.8,
            label="Kabsch RMSD, independent frames, 5th percentile",
        )
        if error["decorrelation_time_fs"] is not None:
            ax.axvline(error["decorrelation_time_fs"], color="0.5", linewidth=0.8, label="decorrelated")
        ax.set(
            xscale="log",
            xlabel="time after the start (fs)",
            ylabel="Angstrom",
            title="coordinate error against the continuation",
        )
        figure.legend(loc="outside right upper", fontsize="small")
        figures["coordinate_error"] = figure
    deviations = {name: d for name, d in report["deviation"].items() if d is not None}
    if deviations:
        figure = Figure(figsize=(6, 3.2 * len(deviations)), layout="constrained")
        for ax, (name, d) in zip(figure.subplots(len(deviations), 1, squeeze=False)[:, 0], deviations.items()):
            for key, label in (
                ("vs_continuation", "from the continuation"),
                ("vs_reference_mean", "from the reference mean"),
            ):
                if d[key] is not None:
                    ax.plot(
                        d[key]["time_fs"],
                        [np.nan if v is None else v for v in d[key]["rms"]],
                        marker="o",
                        markersize=3,
                        label=label,
                    )
            ax.axhline(d["reference_fluctuation"], color="k", linestyle=":", label="reference fluctuation")
            ax.set(
                xscale="log", xlabel="time after the start (fs)", ylabel=f"RMS {NAMES[name]} deviation ({UNITS[name]})"
            )
            ax.legend(fontsize="small")
        figures["deviation"] = figure
    for name, distribution in report["distributions"].items():
        if distribution["jsd_mean"] is not None:
            figures[name] = _histogram_grid(distribution, UNITS[name])
    motion = report.get("motion")
    if motion is not None:
        figure = Figure(figsize=(7, 3.5), layout="constrained")
        ax = figure.add_subplot()
        spectrum = motion["spectrum"]
        for key, style in (("reference", dict(color="k")), ("predicted", dict(color="C1", linestyle="--"))):
            ax.plot(spectrum["wavenumber"], spectrum[key], label=key, **style)
        ax.set(
            xlabel="wavenumber (cm$^{-1}$)",
            ylabel="share of the power",
            title=f"vibrational density of states, overlap {spectrum['overlap']:.3f}",
        )
        ax.legend(fontsize="small")
        figures["spectrum"] = figure
    energy = report.get("energy")
    if energy and energy.get("jsd") is not None:
        figure = Figure(figsize=(5, 3.5), layout="constrained")
        ax = figure.add_subplot()
        edges = np.linspace(*energy["range"], len(energy["predicted"]) - 1)
        for key, style in (("reference", dict(color="k")), ("predicted", dict(color="C1", linestyle="--"))):
            ax.stairs(np.asarray(energy[key])[1:-1] / np.diff(edges), edges, label=key, **style)
        ax.set(xlabel="GFN2-xTB energy (kcal/mol)", title=f"energies, JSD {energy['jsd']:.3f}")
        ax.legend(fontsize="small")
        figures["energy"] = figure
    if report.get("title"):  # what the figures are of: molecule, checkpoint, frames
        for figure in figures.values():
            figure.suptitle(report["title"], fontsize="small")
    return figures
