import csv

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from asteroid.training.figures import error_vs_horizon, trajectory_traces
from asteroid.training.metrics import ForecastMetrics
from asteroid.training.test_table import format_number, format_table, metrics_table, write_csv

PER_STEP = {
    "mse": torch.tensor([1e-4, 4e-4, 9e-4]),
    "mae": torch.tensor([0.01, 0.02, 0.03]),
    "rmsd": torch.tensor([0.1, 0.2, 0.3]),
    "ade": torch.tensor([0.5, 1.0, 1.5]),
    "bond": torch.tensor([0.001, 0.002, 0.006]),
}


def test_metrics_table_rows_and_mean():
    rows = metrics_table(PER_STEP, horizon=3)
    assert [row["step"] for row in rows] == [1, 2, 3, "mean"]
    assert rows[1]["ade"] == pytest.approx(1.0)
    assert rows[-1]["mse"] == pytest.approx(14e-4 / 3)
    assert rows[-1]["ade"] == pytest.approx(1.0)  # the ADE
    assert rows[-1]["bond"] == pytest.approx(0.003)


def test_metrics_table_from_forecast_metrics_agrees_with_its_means():
    pred, target = torch.randn(2, 3, 2, 5, 3).unbind(0)
    z = torch.tensor([[6, 1, 1, 1, 1]] * 3)
    reference = torch.tensor(
        [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]
    ).expand(3, 5, 3)
    metrics = ForecastMetrics(horizon=2)(
        pred + reference[:, None], target + reference[:, None], torch.ones(3, 5, dtype=torch.bool), z, reference
    )
    mean = metrics_table(metrics, horizon=2)[-1]
    for name in ("mse", "mae", "rmsd", "bond"):
        assert mean[name] == pytest.approx(metrics[f"{name}_mean"].item())
    assert mean["ade"] == pytest.approx(metrics["ADE"].item())


def test_metrics_table_rejects_wrong_horizon_and_missing_metric():
    with pytest.raises(ValueError, match="mse has 3 steps, expected the horizon 4"):
        metrics_table(PER_STEP, horizon=4)
    with pytest.raises(ValueError, match="lack bond"):
        metrics_table({k: v for k, v in PER_STEP.items() if k != "bond"}, horizon=3)


def test_format_number():
    assert format_number(0.012345) == "0.01235"
    assert format_number(1.5e-5) == "1.500e-05"
    assert format_number(0.0) == "0"
    assert format_number(3) == "3"
    assert format_number("mean") == "mean"


def test_format_table_header_mean_row_and_alignment():
    text = format_table(metrics_table(PER_STEP, horizon=3), title="aspirin, test")
    lines = text.splitlines()
    assert lines[0] == "aspirin, test"
    for unit in ("MSE Å²", "MAE Å", "RMSD Å", "ADE Å", "bond Å"):
        assert unit in lines[1]
    assert lines[-1].split()[0] == "mean"
    assert len({len(line) for line in lines[1:]}) == 1  # columns aligned
    assert "1.000e-04" in lines[3]


def test_write_csv_round_trip_and_no_temporary_left(tmp_path):
    rows = metrics_table(PER_STEP, horizon=3)
    path = tmp_path / "new" / "dir" / "test_metrics.csv"
    write_csv(rows, path)
    write_csv(rows, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_metrics.csv"]
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [row["step"] for row in read] == ["1", "2", "3", "mean"]
    for written, back in zip(rows, read):
        for name in ("mse", "mae", "rmsd", "ade", "bond"):
            assert float(back[name]) == written[name]


def test_write_csv_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(ValueError):
        write_csv([{"step": 1}, {"step": 2, "extra": 0.5}], path)  # field not in the header
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_error_vs_horizon_lines_and_time_axis(tmp_path):
    figure = error_vs_horizon({"asteroid": PER_STEP["mse"], "constant": np.ones(3)}, dt_fs_per_step=5.0, title="MSE")
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3])
    assert ax.get_legend() is not None
    assert "lead time (fs)" in [child.get_xlabel() for child in ax.child_axes]
    figure.savefig(tmp_path / "e.png")
    assert len(error_vs_horizon({"mse": [1.0, 2.0]}, None).axes[0].child_axes) == 0


def test_trajectory_traces_panels_and_lines(tmp_path):
    history, target, pred = torch.randn(5, 4, 3), torch.randn(3, 4, 3), torch.randn(3, 4, 3)
    figure = trajectory_traces(pred, target, history, atoms=(0, 3), title="ethanol", dt_fs_per_step=0.5)
    assert len(figure.axes) == 3
    for dim, ax in enumerate(figure.axes):
        assert len(ax.lines) == 2 * 3 + 1  # history, true and predicted per atom, plus the t = 0 marker
        predicted = ax.lines[2 * 3 - 1]  # atom 3, predicted
        np.testing.assert_allclose(predicted.get_xdata(), [0, 0.5, 1.0, 1.5])
        np.testing.assert_allclose(predicted.get_ydata(), [history[-1, 3, dim], *pred[:, 3, dim]])
        np.testing.assert_allclose(ax.lines[0].get_xdata(), [-2, -1.5, -1, -0.5, 0])
    figure.savefig(tmp_path / "t.png")


def test_trajectory_traces_rejects_bad_atoms_and_shapes():
    history, frames = np.zeros((2, 4, 3)), np.zeros((3, 4, 3))
    with pytest.raises(ValueError, match="out of range for 4 atoms"):
        trajectory_traces(frames, frames, history, atoms=(0, 4))
    with pytest.raises(ValueError, match="must match"):
        trajectory_traces(frames, frames[:2], history)
