"""Figures for TensorBoard and reports: error against horizon, predicted against true coordinates.

Figures are built on matplotlib's Agg canvas without pyplot, so no global figure state is touched and nothing has
to be closed; the caller owns the returned Figure.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def _numpy(values) -> np.ndarray:
    """float64 array from a numpy array, a list or a torch tensor on any device."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    return np.asarray(values, dtype=np.float64)


def _figure(**kwargs) -> Figure:
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def error_vs_horizon(
    per_step: dict, dt_fs_per_step: float | None = None, title: str = "", ylabel: str = "error", log_y: bool = False
) -> Figure:
    """One line per entry of per_step (name -> (P,) errors: one per metric or one per model) against the horizon
    step 1..P; with dt_fs_per_step, a second x axis on top gives the lead time in fs. log_y: errors that span
    decades (a model against the constant and linear extrapolations)."""
    figure = _figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    for name, errors in per_step.items():
        errors = _numpy(errors)
        ax.plot(np.arange(1, len(errors) + 1), errors, marker="o", markersize=3, label=name)
    ax.set_xlabel("horizon step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    if dt_fs_per_step is not None:
        top = ax.secondary_xaxis("top", functions=(lambda step: step * dt_fs_per_step, lambda fs: fs / dt_fs_per_step))
        top.set_xlabel("lead time (fs)")
    ax.legend()
    ax.set_title(title)
    return figure


def trajectory_traces(
    pred, target, history, atoms=None, title: str = "", dt_fs_per_step: float | None = None
) -> Figure:
    """x, y, z panels of a few atoms' coordinates (default: the first three, or all of a smaller molecule) against
    time: history (H, N, 3) and true frames target (P, N, 3) solid, pred (P, N, 3) dashed from the last history
    frame on, one colour per atom. Time 0 is the last history frame; in steps, or in fs with dt_fs_per_step."""
    pred, target, history = _numpy(pred), _numpy(target), _numpy(history)
    if pred.shape != target.shape or pred.shape[1:] != history.shape[1:]:
        raise ValueError(
            f"pred {pred.shape} and target {target.shape} must match, and share (N, 3) with history {history.shape}"
        )
    n_atoms = pred.shape[1]
    atoms = tuple(range(min(3, n_atoms))) if atoms is None else atoms
    if any(not 0 <= atom < n_atoms for atom in atoms):
        raise ValueError(f"atoms {tuple(atoms)} out of range for {n_atoms} atoms")
    unit = 1.0 if dt_fs_per_step is None else dt_fs_per_step
    t_history = np.arange(1 - len(history), 1) * unit  # last history frame at t = 0
    t_future = np.arange(0, len(pred) + 1) * unit  # futures start at the last history frame: no gap in the lines
    true_future = np.concatenate([history[-1:], target])  # (P + 1, N, 3)
    pred_future = np.concatenate([history[-1:], pred])
    figure = _figure(figsize=(7, 7), layout="constrained")
    axes = figure.subplots(3, 1, sharex=True)
    for dim, ax in enumerate(axes):
        for n, atom in enumerate(atoms):
            colour = f"C{n}"
            ax.plot(t_history, history[:, atom, dim], color=colour, linewidth=1)
            ax.plot(t_future, true_future[:, atom, dim], color=colour, linewidth=1)
            ax.plot(t_future, pred_future[:, atom, dim], color=colour, linewidth=1.5, linestyle="--")
        ax.axvline(0, color="0.6", linewidth=0.8)
        ax.set_ylabel(f"{'xyz'[dim]} (Å)")
    axes[-1].set_xlabel("time (steps)" if dt_fs_per_step is None else "time (fs)")
    legend = [Line2D([], [], color=f"C{n}", label=f"atom {atom}") for n, atom in enumerate(atoms)]
    legend += [
        Line2D([], [], color="k", label="reference"),
        Line2D([], [], color="k", linestyle="--", label="predicted"),
    ]
    axes[0].legend(handles=legend, ncols=min(len(legend), 5), fontsize="small")
    figure.suptitle(title)
    return figure
