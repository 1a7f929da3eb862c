"""The end-of-test table: per-horizon-step errors, printed on the console and written as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from asteroid.errors import DataError
from asteroid.fileio import atomic_output

# Forecasts with no parameters, scored on the same test windows as the trained model: name -> polynomial order.
REFERENCE_ORDERS = {"constant": 0, "linear": 1}
PER_STEP_METRICS = ("mse", "mae", "rmsd", "ade", "bond")
HEADERS = {"step": "step", "mse": "MSE Å²", "mae": "MAE Å", "rmsd": "RMSD Å", "ade": "ADE Å", "bond": "bond Å"}


def metrics_table(metrics: dict, horizon: int) -> list[dict]:
    """Rows {"step": 1..P, "mse", "mae", "rmsd", "ade", "bond"} from ForecastMetrics.compute(), then a row
    {"step": "mean", ...} with the means over steps (its "ade" is the ADE; the FDE is the last step's "ade").

    metrics: per-step sequences of length `horizon` (tensors, arrays or lists) under the names above.
    """
    missing = [name for name in PER_STEP_METRICS if name not in metrics]
    if missing:
        raise ValueError(f"metrics lack {', '.join(missing)}")
    per_step = {name: [float(value) for value in metrics[name]] for name in PER_STEP_METRICS}
    for name, values in per_step.items():
        if len(values) != horizon:
            raise ValueError(f"metric {name} has {len(values)} steps, expected the horizon {horizon}")
    rows = [{"step": k + 1, **{name: per_step[name][k] for name in PER_STEP_METRICS}} for k in range(horizon)]
    rows.append({"step": "mean", **{name: sum(values) / horizon for name, values in per_step.items()}})
    return rows


def format_number(value) -> str:
    """4 significant digits, in scientific notation when small (< 1e-3) or large; ints and strings as they are."""
    if not isinstance(value, float):
        return str(value)
    if 0 < abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Aligned plain-text table of rows (same keys in every row), units in the header, for the console."""
    if not rows:
        raise ValueError("no rows to format")
    columns = list(rows[0])
    cells = [[HEADERS.get(column, column) for column in columns]]
    cells += [[format_number(row[column]) for column in columns] for row in rows]
    widths = [max(len(line[c]) for line in cells) for c in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    if title:
        lines.insert(0, title)
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> None:
    """Write rows as CSV with a header line, atomically (temporary file in the same folder, then renamed)."""
    if not rows:
        raise ValueError("no rows to write")
    with atomic_output(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report_test(rows: list[dict], rotation_error: float, calibration: dict | None, samples: int, run_dir) -> None:
    """Print the test table with what its columns mean, the rotation error and the spread-skill ratios; write
    test_metrics.csv (and spread_skill.csv) into the run's folder when it has one."""
    title = "test windows: error per horizon step (MSE = mean over atoms and x, y, z components)"
    print("\n" + format_table(rows, title=title))
    print(
        "RMSD: after optimal superposition (Kabsch); ADE: mean atom displacement error; bond: mean |error| "
        "of the covalent bond lengths"
    )
    print(f"rotation error: {rotation_error:.3g} Å RMS (forecast of a rotated window against the rotated forecast)")
    if calibration is not None:
        print(
            f"sampled forecasts ({samples} draws per window), spread-skill ratio per step "
            "(1 = spread matches the error of the draws' mean): "
            + " ".join(f"{value:.2f}" for value in calibration["ratio"].tolist())
        )
    if run_dir is None:
        return
    write_csv(rows, run_dir / "test_metrics.csv")
    print(f"test table written to {run_dir / 'test_metrics.csv'}")
    if calibration is not None:
        steps = len(calibration["ratio"])
        per_step = [
            {"step": k + 1, **{key: float(value[k]) for key, value in calibration.items()}} for k in range(steps)
        ]
        write_csv(per_step, run_dir / "spread_skill.csv")


def read_model_rows(path: Path) -> list[dict]:
    """The trained model's per-step rows of a run's test_metrics.csv (not the references', not the mean)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"model", "step", "mse"} <= set(rows[0]):
        raise DataError(f"{path}: not a test table (columns model, step, mse, ...)")
    return [r for r in rows if r["model"] not in REFERENCE_ORDERS and r["step"] != "mean"]
