"""The notebooks in notebooks/ run top to bottom, and are committed without outputs."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# notebook -> files (globs under its work folder) that a complete run leaves behind
EXPECTED_FILES = {
    "01_quickstart.ipynb": [
        "ethanol_400.npz",
        "runs/quickstart/**/best-*.ckpt",
        "runs/quickstart/version_*/test_metrics.csv",
        "error_vs_horizon.png",
        "predicted_vs_true.png",
    ],
    "02_rollout_analysis.ipynb": [
        "rollout_demo.yaml",
        "runs/rollout_demo/**/last.ckpt",
        "rollout.npz",
        "analysis/report.json",
        "analysis/bond_length.png",
        "analysis/dihedral.png",
        "trajectory_0.png",
    ],
    "03_your_own_data.ipynb": ["my_run.extxyz", "my_run.dcd", "my_run.pdb", "my_data.yaml", "inspect.png"],
}
# notebook -> text its printed output must hold (03's one-batch fit leaves no file behind, only its test table)
EXPECTED_TEXT = {
    "01_quickstart.ipynb": ["time-ordered", "test windows: error per horizon step"],
    "02_rollout_analysis.ipynb": ["rollout: 1600 frames", "none in 4 x 400 frames"],  # BATCH 4 x ROLLOUT_FRAMES 400
    "03_your_own_data.ipynb": ["time-ordered", "train: ", "test windows: error per horizon step"],
}


def parameters_cell(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def inject_parameters(nb, **values) -> None:
    """Papermill's convention: a cell after the one tagged 'parameters' overrides some of its names."""
    index = parameters_cell(nb)
    source = nb.cells[index].source
    for name in values:
        assert f"\n{name} = " in f"\n{source}", f"{name} is not a parameter of this notebook"
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected"]}))


def outputs(nb, kind: str) -> list:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if out.output_type == kind]


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: one core, as the suite runs
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    inject_parameters(nb, WORK=str(tmp_path / "work"))  # the small defaults stay; nothing lands in the repo
    # The kernel starts in notebooks/, as Jupyter starts it, so the notebook finds ../experiments;
    # a cell that raises fails the test with its traceback (CellExecutionError).
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for pattern in EXPECTED_FILES[name]:
        assert list((tmp_path / "work").glob(pattern)), f"{name} wrote no {pattern}"
    printed = "".join(out.text for out in outputs(nb, "stream"))
    for text in EXPECTED_TEXT[name]:
        assert text in printed, f"{name} printed no {text!r}"
    images = [out for out in outputs(nb, "display_data") if "image/png" in out.data]
    assert images, f"{name} showed no figure"
    shown = [
        out.get("text", "") + out.get("data", {}).get("text/plain", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    ]
    assert not any("\x1b[" in text for text in shown), f"{name} printed terminal escape codes (unreadable here)"


def test_committed_notebooks_are_clean():
    """Committed notebooks carry no outputs or execution counts (small diffs, no stale results)."""
    committed = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
    assert committed == sorted(EXPECTED_FILES)
    for name in committed:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        parameters_cell(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: a cell has outputs"
