"""`asteroid.load` and the ASE driver: a checkpoint alone rebuilds the model; commands take it without --config."""

import json

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

import asteroid
from asteroid.api.forecaster import load_with_data
from asteroid.cli import main
from asteroid.errors import AsteroidError
from asteroid.models.rollout import rollout

from helpers import tiny_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (stochastic, bond constraints: the shipped base config), its checkpoint and its data's frames."""
    folder = tmp_path_factory.mktemp("forecaster")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert (
            main(["fit", *tiny_args(folder, name="tiny"), "--trainer.max_epochs", "1", "--test_after_fit", "false"])
            == 0
        )
    data = np.load(folder / "toy.npz")
    return folder, folder / "runs/tiny/version_0/checkpoints/last.ckpt", data["R"], data["z"]


@pytest.fixture
def model(trained):
    return asteroid.load(trained[1])


def test_a_checkpoint_alone_gives_the_trained_model(trained, model):
    folder, ckpt, R, z = trained
    history = R[: 40 : model.spacing]  # (20, N, 3): more than it needs, as a user would pass
    loaded, _ = load_with_data(ckpt)  # the same checkpoint with its run's config and data
    reference = loaded.net.generate(
        torch.as_tensor(history[-model.history_frames :], dtype=torch.float32)[None],
        torch.as_tensor(z)[None],
        torch.ones(1, len(z), dtype=torch.bool),
    )
    forecast = model.forecast(history)
    np.testing.assert_allclose(forecast.positions, reference[0].detach().numpy(), rtol=0, atol=1e-6)
    # toy frames 0.5 fs apart, spacing 2, horizon 2: the next two history-spaced frames
    assert model.frame_fs == 1.0 and forecast.times_fs.tolist() == [1.0, 2.0]
    assert model.stochastic and "stochastic" in repr(model)


def test_rollout_from_numpy_or_atoms_matches_the_rollout_algorithm(trained, model):
    _, _, R, z = trained
    history = R[: 40 : model.spacing]
    frames = model.rollout(history, 7, seed=3)
    assert frames.positions.shape == (7, len(z), 3) and frames.times_fs.tolist() == [1.0 * k for k in range(1, 8)]
    atoms = model.rollout([Atoms(numbers=z, positions=p) for p in history], 7, seed=3)
    np.testing.assert_array_equal(atoms.positions, frames.positions)
    expected = rollout(
        model.net,
        torch.as_tensor(history[-model.history_frames :], dtype=torch.float32)[None],
        torch.as_tensor(z)[None],
        torch.ones(1, len(z), dtype=torch.bool),
        7,
        sample=True,
        thermostat_coupling=4.0,
        generator=torch.Generator().manual_seed(3),
    )
    np.testing.assert_array_equal(frames.positions, expected[0].numpy())
    assert not np.array_equal(model.rollout(history, 7, seed=4).positions, frames.positions)  # draws, not the mean
    assert [a.info["time_fs"] for a in frames.to_atoms()[:2]] == [1.0, 2.0]


def test_ase_driver_advances_atoms_frame_by_frame_like_the_rollout(trained, model, tmp_path):
    _, _, R, z = trained
    history = [Atoms(numbers=z, positions=p) for p in R[: 40 : model.spacing]]
    dynamics = asteroid.ForecastDynamics(model, history, trajectory=str(tmp_path / "md.traj"), seed=5)
    assert dynamics.atoms.get_temperature() > 0 and dynamics.time_fs == 0.0  # moving from the start (issue 30)
    seen = []
    dynamics.attach(lambda: seen.append((dynamics.get_time(), dynamics.atoms.positions.copy())), interval=1)
    dynamics.run(5)  # 2 forecasts and a half
    expected = model.rollout(history, 5, seed=5)
    np.testing.assert_allclose(np.stack([p for _, p in seen[1:]]), expected.positions, rtol=0, atol=1e-6)
    assert len(ase.io.read(tmp_path / "md.traj", ":")) == 6  # the start and 5 steps
    assert dynamics.atoms.get_temperature() > 0  # velocities from the last step
    assert dynamics.time_fs == pytest.approx(5 * model.frame_fs)  # get_time() is ASE's unit, as in ASE's dynamics


def test_a_run_name_loads_its_newest_checkpoint_and_bad_input_is_one_line(trained, monkeypatch):
    folder, _, R, z = trained
    monkeypatch.chdir(folder)
    model = asteroid.load("tiny")
    assert model.checkpoint.endswith("runs/tiny/version_0/checkpoints/last.ckpt")
    with pytest.raises(AsteroidError, match="history has 2 frames; the model needs 3, 1.0 fs apart"):
        model.forecast(R[:4:2])
    with pytest.raises(
        AsteroidError, match=r"history: its atoms \(H2O, z = \[1, 1, 8\]\) are not those of any molecule"
    ):
        model.forecast(R[:6, :3], z=[1, 1, 8])
    with pytest.raises(AsteroidError, match="nope: no such checkpoint file, nor a run runs/nope with one"):
        asteroid.load("nope")
    checkpoint = torch.load(folder / "runs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    name = next(key for key, value in checkpoint["state_dict"].items() if value.is_floating_point())
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], float("nan"))
    torch.save(checkpoint, folder / "diverged.ckpt")
    with pytest.raises(AsteroidError, match="diverged.ckpt: 1 weight tensor\\(s\\) hold NaN or infinity"):
        asteroid.load(folder / "diverged.ckpt")


def test_test_rollout_and_benchmark_need_only_the_checkpoint(trained, monkeypatch, capsys):
    folder, ckpt, _, _ = trained
    monkeypatch.chdir(folder)
    assert main(["test", "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "1"]) == 0
    assert "test table written to runs/tiny/version_" in capsys.readouterr().out
    assert (
        main(["rollout", "--ckpt_path", "last", "--name", "tiny", "--frames", "6", "--out", "p.xyz", "--no-progress"])
        == 0
    )
    assert len(ase.io.read(folder / "p.xyz", ":")) == 6
    assert (
        main(
            [
                "benchmark",
                "--ckpt_path",
                "last",
                "--name",
                "tiny",
                "--md-steps",
                "4",
                "--forecasts",
                "2",
                "--repeats",
                "1",
                "--json",
                "bench.json",
            ]
        )
        == 0
    )
    [result] = json.loads((folder / "bench.json").read_text())
    assert result["weights"] == str(ckpt.relative_to(folder)) and result["n_atoms"] == 9


def test_loading_a_model_chooses_the_threads_as_the_cli_does(trained, monkeypatch, capsys):
    """On 2 cores torch's default two threads made `model.rollout(h, 1000)` 15x slower than one (issue 30)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    torch.set_num_threads(2)
    try:
        asteroid.load(trained[1])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert "asteroid: 1 torch thread(s) on 2 core(s); set OMP_NUM_THREADS" in capsys.readouterr().err
