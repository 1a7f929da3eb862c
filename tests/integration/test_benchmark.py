"""`asteroid benchmark`: the per-picosecond arithmetic, its inputs, the FLOP count, the checkpoint's test MSE and a run
on a tiny model."""

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

import asteroid.commands.benchmark as benchmark_command
from asteroid.cli import main as cli_main
from asteroid.commands.benchmark import main
from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.errors import ConfigError, DataError
from asteroid.models import Asteroid
from asteroid.simulation.xtb import TIMESTEP_FS, read_structure, structure_path
from asteroid.studies.speed import (
    WATER_SPACING,
    ballistic_history,
    checkpoint_test_mse,
    config_molecule,
    forecast_flops,
    model_seconds_per_ps,
    seconds_per_ps,
    thermal_speed,
    water_cluster,
)

from helpers import ETHANOL_Z, write_toy_trajectory

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
KEYS = {
    "molecule",
    "n_atoms",
    "spacing",
    "device",
    "md_seconds_per_ps",
    "model_seconds_per_ps",
    "model_batched_seconds_per_ps",
    "batch",
    "speedup",
    "speedup_batched",
    "flops_per_forecast",
    "flops_per_ps",
    "test_mse",
    "frames_per_second",
    "ps_per_second",
    "batched_frames_per_second",
    "batched_ps_per_second",
}
POSITIVE = KEYS - {"molecule", "device", "test_mse"}


def test_seconds_per_simulated_picosecond():
    assert seconds_per_ps(2.0, frames=200, frame_fs=5.0) == pytest.approx(2.0)  # 200 x 5 fs = 1 ps
    assert seconds_per_ps(2.0, frames=100, frame_fs=5.0, trajectories=4) == pytest.approx(1.0)
    assert seconds_per_ps(0.3, frames=2000, frame_fs=0.5) == pytest.approx(0.3)  # 2000 MD steps of 0.5 fs


def test_ballistic_history_is_thermal_straight_line_motion_ending_at_the_structure():
    atoms = molecule("CH3CH2OH")
    history = ballistic_history(atoms, trajectories=2000, frames=4, frame_fs=5.0)
    assert history.shape == (2000, 4, 9, 3)
    np.testing.assert_allclose(history[:, -1], np.broadcast_to(atoms.positions, (2000, 9, 3)))
    steps = np.diff(history, axis=1)  # (B, H-1, N, 3): one velocity per trajectory, constant in time
    np.testing.assert_allclose(steps, np.broadcast_to(steps[:, :1], steps.shape), atol=1e-12)
    speed = steps[:, 0].std(axis=(0, 2)) / 5.0  # (N,) Angstrom/fs over trajectories and components
    np.testing.assert_allclose(speed, thermal_speed(atoms), rtol=0.05)
    assert thermal_speed(atoms)[atoms.numbers == 1].min() > thermal_speed(atoms)[atoms.numbers == 6].max()
    assert not np.allclose(history[0], history[1])  # independent trajectories


def test_water_cluster_is_whole_molecules_on_a_grid():
    cluster = water_cluster(10)
    assert len(cluster) == 30 and cluster.get_chemical_formula() == "H20O10"
    oxygens = cluster.positions[cluster.numbers == 8]
    distances = np.linalg.norm(oxygens[:, None] - oxygens[None], axis=-1)[np.triu_indices(10, 1)]
    assert distances.min() == pytest.approx(WATER_SPACING, abs=0.15)  # centres of mass on the grid
    for i in range(10):
        water = cluster.positions[3 * i : 3 * i + 3]
        assert np.linalg.norm(water[1:] - water[0], axis=-1) == pytest.approx([0.97, 0.97], abs=0.01)
    assert not np.allclose(water_cluster(10, seed=1).positions, cluster.positions)


def test_test_mse_is_the_checkpoints_own_mean_over_horizon_steps(tmp_path):
    run = tmp_path / "runs/x/version_0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints/best.ckpt"
    ckpt.write_bytes(b"")
    assert checkpoint_test_mse(str(ckpt)) is None  # no test table yet
    assert checkpoint_test_mse(None) is None  # untrained
    (run / "test_metrics.csv").write_text(
        "model,step,mse,mae\nAsteroid,1,0.1,0\nAsteroid,2,0.3,0\n"
        "Asteroid,mean,0.2,0\nconstant,1,9.0,0\nlinear,1,7.0,0\n"
    )
    assert checkpoint_test_mse(str(ckpt)) == pytest.approx(0.2)
    (run / "test_metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="test_metrics.csv: not a test table"):
        checkpoint_test_mse(str(ckpt))


def test_flops_of_a_forecast_grow_with_the_molecule():
    net = Asteroid(3, 2, hidden=16, heads=2, spatial_layers=1).eval()
    small, large = (
        forecast_flops(net, molecule("H2O"), torch.device("cpu")),
        forecast_flops(net, molecule("CH3CH2OH"), torch.device("cpu")),
    )
    assert 0 < small < large


def test_the_molecule_of_a_config_is_its_built_in_structure_or_first_frame(tmp_path):
    toy = tmp_path / "toy.npz"
    R = write_toy_trajectory(toy)  # dt_fs 0.5
    np.savez(tmp_path / "slow.npz", R=R, z=ETHANOL_Z, dt_fs=2.0)
    ethanol = read_structure(structure_path("ethanol")).positions

    def molecule_of(**source):
        return config_molecule(TrajectoryDataModule(sources=[source]))

    name, atoms, dt_fs = molecule_of(path=str(toy))
    assert name == "toy" and dt_fs == 0.5 and list(atoms.numbers) == list(ETHANOL_Z)
    np.testing.assert_allclose(atoms.positions, R[0])
    name, atoms, dt_fs = molecule_of(path=str(tmp_path / "not_yet.npz"), molecule="ethanol")
    assert name == "ethanol" and dt_fs == TIMESTEP_FS and np.allclose(atoms.positions, ethanol)
    name, atoms, dt_fs = molecule_of(path=str(tmp_path / "slow.npz"), molecule="ethanol")
    assert name == "ethanol" and dt_fs == 2.0 and np.allclose(atoms.positions, ethanol)
    with pytest.raises(DataError, match="missing.npz"):
        molecule_of(path=str(tmp_path / "missing.npz"))


def test_model_time_is_per_trajectory_and_positive_and_split_into_the_rollout_parts():
    net = Asteroid(3, 2, hidden=16, heads=2, spatial_layers=1).eval()
    seconds, split = model_seconds_per_ps(
        net,
        molecule("CH3CH2OH"),
        trajectories=4,
        forecasts=2,
        frame_fs=5.0,
        device=torch.device("cpu"),
        repeats=1,
        clock="cpu",
    )
    assert 0 < seconds < 100
    assert list(split) == ["network", "rigid_motion", "thermostat", "projection", "rest"]
    # no bonded head and no noise: the projection and the thermostat cost only their labels
    assert split["network"] > 0 and max(split["projection"], split["thermostat"]) < 0.05 * split["network"]


def tiny_config(tmp_path) -> Path:
    """Base config with a tiny net and short windows; its data (ethanol) is never generated, only named."""
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""extends: {EXPERIMENTS / "base.yaml"}
name: tiny
data:
  sources: [{{path: {tmp_path / "ethanol_xtb.npz"}, molecule: ethanol}}]
  history: 3
  horizon: 2
  spacing: 4
model:
  net:
    init_args: {{hidden: 16, heads: 2, spatial_layers: 1}}
""")
    return config


def test_benchmark_writes_positive_figures_for_every_molecule(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "--config",
                str(tiny_config(tmp_path)),
                "--water",
                "2",
                "--batch",
                "3",
                "--forecasts",
                "1",
                "--md-steps",
                "2",
                "--md-warmup",
                "1",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert [r["molecule"] for r in results] == ["ethanol", "water2"]
    for result in results:
        assert KEYS <= set(result)
        assert all(result[key] > 0 for key in POSITIVE), result
        assert result["weights"] == "untrained" and result["batch"] == 3 and result["spacing"] == 4
        # the shipped rollout was timed, and its settings travel with the row (base.yaml: both heads on; untrained,
        # the bonded geometry is not fitted and the noise head has no training temperature, so no thermostat)
        assert result["bond_constraints"] is False and result["stochastic"] is True and result["starts"] == "ballistic"
        assert result["thermostat"] is None and set(result["batched_forecast_ms"]) == set(result["forecast_ms"])
        assert result["speedup"] == pytest.approx(result["md_seconds_per_ps"] / result["model_seconds_per_ps"])
        # frames 4 x 0.5 fs apart: 500 frames per simulated picosecond
        assert result["frames_per_second"] == pytest.approx(500 * result["ps_per_second"])
        assert result["batched_ps_per_second"] == pytest.approx(1 / result["model_batched_seconds_per_ps"])
    assert results[0]["n_atoms"] == 9 and results[1]["n_atoms"] == 6
    assert results[0]["test_mse"] is None and results[1]["test_mse"] is None  # untrained: no test of its own
    # FLOPs per picosecond: one forecast of 2 frames 4 x 0.5 fs apart every 4 fs, 250 forecasts per picosecond
    assert results[0]["flops_per_ps"] == pytest.approx(250 * results[0]["flops_per_forecast"])
    assert results[1]["flops_per_forecast"] < results[0]["flops_per_forecast"]  # 6 atoms against 9
    printed = capsys.readouterr()
    assert "| ethanol | 9 | 4 |" in printed.out and "MFLOP per ps" in printed.out
    # what is being timed, as it is timed (issue 30: silent for 90 s)
    assert "ethanol: timing GFN2-xTB MD" in printed.err and "ethanol: timing the model's rollout" in printed.err


def test_bad_invocations_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing to benchmark"):
        main([])
    with pytest.raises(ConfigError, match="go with --ckpt_path or --config"):
        main(["--molecules", "ethanol", "--water", "8"])
    assert cli_main(["benchmark", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_a_trained_model_is_timed_from_the_test_windows_its_row_reports(monkeypatch):
    """The row says where the rollout started: from the checkpoint's test windows it must have started there (it
    had started from ballistic histories while saying "test windows"), compiled when asked, at batch 1 and B."""
    calls = []

    def model_time(net, atoms, trajectories, forecasts, frame_fs, device, repeats, clock, starts, compiled):
        calls.append((trajectories, starts, compiled))
        return 1.0, {"network": 1.0, "rest": 0.0}

    monkeypatch.setattr(benchmark_command, "model_seconds_per_ps", model_time)
    monkeypatch.setattr(benchmark_command, "md_seconds_per_ps", lambda *args: 10.0)
    starts = np.zeros((3, 3, 9, 3))
    args = Namespace(forecasts=1, batch=3, repeats=1, md_steps=1, md_warmup=0, threads=1, clock="cpu", compile=True)
    net = Asteroid(3, 2, hidden=16, heads=2, spatial_layers=1).eval()
    row = benchmark_command.benchmark_case(
        "ethanol", molecule("CH3CH2OH"), net, 4, 0.5, "trained.ckpt", args, torch.device("cpu"), None, starts
    )
    assert row["starts"] == "test windows" and row["compiled"] is True
    assert [(batch, given is starts, compiled) for batch, given, compiled in calls] == [
        (1, True, True),
        (3, True, True),
    ]
