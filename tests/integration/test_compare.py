"""`asteroid compare`: runs each model once per seed, appends rows, skips finished runs, writes the tables."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from asteroid.cli import main
from asteroid.studies.peer_rollout import HISTORY_MEAN, estag_pivot

from helpers import ETHANOL_Z, write_toy_trajectory

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = [
    "--",
    "--trainer.max_steps",
    "4",
    "--trainer.val_check_interval",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "2",
    "--data.spacing",
    "1",
    "--data.history",
    "3",
    "--data.horizon",
    "2",
]


@pytest.fixture
def experiments(tmp_path):
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=300)
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "models").symlink_to(EXPERIMENTS / "models")
    (folder / "toy.yaml").write_text(
        f"extends: {EXPERIMENTS / 'base.yaml'}\nname: toy\ndata:\n  sources:\n"
        f"    - path: {tmp_path / 'toy.npz'}\n  cache_dir: {tmp_path / 'cache'}\n"
    )
    return folder


def test_compare_appends_rows_and_skips_finished_runs(experiments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [
        "compare",
        "--molecules",
        "toy",
        "--models",
        "last_frame",
        "lstm",
        "--seeds",
        "2",
        "--budget-minutes",
        "1",
        "--experiments",
        str(experiments),
        "--out",
        str(tmp_path / "results"),
        *TINY,
    ]
    assert main(argv) == 0
    with open(tmp_path / "results/accuracy.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["molecule", "model", "seed", "step", "mse", "mae", "rmsd", "ade"]
    # the parameter-free baseline runs once: its forecasts do not depend on the seed
    assert sorted({(r["model"], r["seed"]) for r in rows}) == [("last_frame", "0"), ("lstm", "0"), ("lstm", "1")]
    assert sorted({r["step"] for r in rows}) == ["1", "2"] and all(float(r["mse"]) > 0 for r in rows)
    with open(tmp_path / "results/accuracy_steps.csv", newline="") as handle:
        steps = {(r["model"], r["seed"]): int(r["steps"]) for r in csv.DictReader(handle)}
    assert steps[("lstm", "0")] == steps[("lstm", "1")] == 4  # --trainer.max_steps 4, well within the budget
    assert steps[("last_frame", "0")] == 0  # nothing to train
    table = (tmp_path / "results/accuracy.md").read_text()
    assert "asteroid compare --molecules toy" in table and "## toy" in table and "**" in table
    assert "| lstm | 2 | 4 |" in table and "| last_frame | 1 | 0 |" in table and "| model | ADE | FDE |" in table
    assert "1-minute CPU-time budget" in table and "follow the fraction of that budget used" in table
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done, skipped") == 3


def test_a_zero_budget_trains_every_model_to_its_max_steps(experiments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "compare",
                "--molecules",
                "toy",
                "--models",
                "lstm",
                "--seeds",
                "1",
                "--budget-minutes",
                "0",
                "--experiments",
                str(experiments),
                "--out",
                str(tmp_path / "equal"),
                *TINY,
            ]
        )
        == 0
    )
    assert (tmp_path / "equal/accuracy_steps.csv").read_text().splitlines()[1] == "toy,lstm,0,4"
    assert (tmp_path / "runs/compare/default-equal-steps/toy/lstm/seed0").is_dir()
    table = (tmp_path / "equal/accuracy.md").read_text()
    assert "to the config's `max_steps`, with no time budget (equal steps)" in table


def test_a_second_comparison_into_the_same_table_is_refused(experiments, tmp_path, monkeypatch, capsys):
    from asteroid.fileio import sole_writer

    monkeypatch.chdir(tmp_path)
    argv = [
        "compare",
        "--molecules",
        "toy",
        "--models",
        "last_frame",
        "--seeds",
        "1",
        "--budget-minutes",
        "1",
        "--experiments",
        str(experiments),
        "--out",
        str(tmp_path / "results"),
        *TINY,
    ]
    with sole_writer(tmp_path / "results/accuracy.csv"):  # as a first comparison holds it while it runs
        assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "results/accuracy.csv: another process is making this file now" in error[0]
    assert not (tmp_path / "results/accuracy.csv").exists()
    assert main([*argv[: -len(TINY)], "--out", str(tmp_path / "other"), *TINY]) == 0  # another table: no conflict
    assert main(argv) == 0  # and once the first has finished


def test_compare_unknown_model(experiments, tmp_path, capsys):
    assert main(["compare", "--molecules", "toy", "--models", "nope", "--experiments", str(experiments)]) == 2
    assert "no model config" in capsys.readouterr().err


def test_frames_lengthens_generated_trajectories_into_their_own_files(tmp_path):
    from asteroid.data.sources import TrajectorySource
    from asteroid.studies.comparison import lengthened_sources

    override = lengthened_sources(
        [TrajectorySource("data/ethanol_xtb.npz", molecule="ethanol")], 30000, Path("ethanol.yaml")
    )
    assert override[0] == "--data.sources"
    [source] = json.loads(override[1])
    assert source["path"] == "data/ethanol_xtb_30000frames.npz" and source["frames"] == 30000
    assert source["molecule"] == "ethanol"


def test_frames_refuses_a_file_of_ones_own(experiments, tmp_path, capsys):
    code = main(
        [
            "compare",
            "--molecules",
            "toy",
            "--models",
            "last_frame",
            "--frames",
            "30000",
            "--experiments",
            str(experiments),
            "--out",
            str(tmp_path / "results"),
        ]
    )
    assert code == 2
    assert "lengthens generated trajectories only" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_peer_protocol_runs_from_a_molecule_config(experiments, tmp_path, monkeypatch):
    # base.yaml leaves the window layout unset, so a preset can replace it from the command line
    monkeypatch.chdir(tmp_path)
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=20401)  # ESTAG's preset leaves out 10,000 frames each end
    assert (
        main(
            [
                "compare",
                "--molecules",
                "toy",
                "--models",
                "last_frame",
                "--seeds",
                "1",
                "--protocol",
                "estag",
                "--experiments",
                str(experiments),
                "--out",
                str(tmp_path / "results"),
                "--",
                "--trainer.max_steps",
                "2",
                "--trainer.limit_val_batches",
                "1",
                "--trainer.limit_test_batches",
                "2",
            ]
        )
        == 0
    )
    rows = (tmp_path / "results/accuracy_estag.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("toy,last_frame,0,1,")
    table = (tmp_path / "results/accuracy_estag.md").read_text()
    assert "Protocol `estag`: ESTAG (GLAD-RUC/ESTAG md17/dataset.py): heavy atoms" in table
    assert "they overlap training windows in time" in table and "our default protocol is the leak-free one" in table
    # ESTAG's rollout metric: the last frame held from the official pivot, scored at rounds 100 and 200
    x = np.load(tmp_path / "toy.npz")["R"][:-1][:, np.asarray(ETHANOL_Z) > 1]
    pivot = estag_pivot(len(x))
    with open(tmp_path / "results/accuracy_estag_rollout.csv") as handle:
        rollout = list(csv.DictReader(handle))
    assert [(r["model"], r["round"]) for r in rollout] == [
        ("last_frame", "100"),
        ("last_frame", "200"),
        (HISTORY_MEAN, "100"),
        (HISTORY_MEAN, "200"),
    ]
    history_mean = x[[pivot - 10 * i for i in range(10, 0, -1)]].mean(0)
    for r in rollout:
        truth = x[pivot + 10 * (int(r["round"]) - 1)]
        held = x[pivot - 10] if r["model"] == "last_frame" else history_mean
        np.testing.assert_allclose(float(r["mse"]), ((truth - held) ** 2).mean(), rtol=1e-5)
    assert "ESTAG's rollout metric" in table and "| last_frame | 1 | " in table and f"| {HISTORY_MEAN} | 1 |" in table


def test_backfill_takes_steps_and_ade_from_the_run_folders(tmp_path, monkeypatch):
    import torch

    from asteroid.studies.accuracy_tables import backfill

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs/compare/default/toy/lstm/seed0/version_0"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 7}, folder / "checkpoints/last.ckpt")
    (folder / "test_metrics.csv").write_text(
        "model,step,mse,mae,rmsd,ade,bond\nLSTMForecaster,1,1,1,1,0.25,1\n"
        "LSTMForecaster,mean,1,1,1,0.25,1\nconstant,1,2,2,2,0.5,2\n"
    )
    rows = [
        {"molecule": "toy", "model": "lstm", "seed": "0", "step": "1", "mse": "1"},  # written before ADE was
        {"molecule": "toy", "model": "gone", "seed": "0", "step": "1", "mse": "1"},
    ]  # its run folder is elsewhere
    trained = {}
    backfill(rows, trained, "default", equal_steps=False)
    assert trained == {("toy", "lstm", "0"): 7}
    assert rows[0]["ade"] == "0.25" and "ade" not in rows[1]


def test_a_model_may_be_a_config_file_named_by_its_stem():
    from asteroid.studies.comparison import experiment_files

    files = experiment_files(EXPERIMENTS / "models", ["egnn", str(EXPERIMENTS / "official/estag.yaml")], "model")
    assert files == {"egnn": EXPERIMENTS / "models/egnn.yaml", "estag": EXPERIMENTS / "official/estag.yaml"}
