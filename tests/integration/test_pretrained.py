"""The shipped pretrained model and the way to it: mixed-molecule training (experiments/pretrain.yaml), `asteroid
export`, fine-tuning from weights only, `asteroid.load("pretrained")` on molecules it never saw, and a rollout from
one structure."""

import importlib.util
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.data import atomic_masses
from ase.io import read

import asteroid
from asteroid.api.forecaster import load_with_data
from asteroid.checkpoints import DATA_KEY, PRETRAINED_FILE, PROVENANCE_KEY, read_checkpoint
from asteroid.cli import main
from asteroid.data.dataset import collate_windows
from asteroid.errors import AsteroidError
from asteroid.models.bonded import plausible_geometry
from asteroid.models.noise import step_energy
from asteroid.models.rollout import COMPILED_STEP, forecast_step

from helpers import ETHANOL_Z, tiny_args, write_toy_trajectory

ROOT = Path(__file__).resolve().parents[2]
STRUCTURES = ROOT / "src" / "asteroid" / "structures"


def test_pretraining_config_trains_on_molecules_of_different_sizes(tmp_path, monkeypatch, capsys):
    """experiments/pretrain.yaml on two of its sources, shortened: a built-in molecule and a structure file, made by
    GFN2-xTB on first use and trained on in one run."""
    monkeypatch.chdir(ROOT)
    sources = yaml.safe_load((ROOT / "experiments" / "pretrain.yaml").read_text())["data"]["sources"]
    picked = [next(s for s in sources if "molecule" in s), next(s for s in sources if "structure" in s)]
    small = [{**s, "path": str(tmp_path / Path(s["path"]).name), "frames": 240} for s in picked]
    code = main(
        [
            "fit",
            "--config",
            "experiments/pretrain.yaml",
            "--trainer.fast_dev_run",
            "true",
            "--data.spacing",
            "1",
            "--data.sources",
            json.dumps(small),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks",
            "null",
        ]
    )
    assert code == 0
    assert all(Path(s["path"]).is_file() for s in small)
    assert "Asteroid" in capsys.readouterr().out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model trained on a toy molecule and exported."""
    folder = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["fit", *tiny_args(folder)]) == 0
        out = folder / "shipped.ckpt"
        assert main(["export", "--ckpt_path", "last", "--name", "tiny", "--out", str(out), "--command", "a test"]) == 0
    return folder, out


def test_export_keeps_the_weights_and_records_where_they_came_from(exported, capsys):
    folder, out = exported
    shipped, trained = read_checkpoint(out), read_checkpoint(folder / "runs/tiny/version_0/checkpoints/last.ckpt")
    assert (
        "optimizer_states" not in shipped
        and out.stat().st_size < 0.5 * (folder / "runs/tiny/version_0/checkpoints/last.ckpt").stat().st_size
    )
    for name, value in trained["state_dict"].items():
        torch.testing.assert_close(shipped["state_dict"][name], value)
    provenance = shipped[PROVENANCE_KEY]
    assert provenance["command"] == "a test" and provenance["steps"] == trained["global_step"]
    assert (
        list(provenance["data"]) == [str(folder / "toy.npz")] and len(provenance["data"][str(folder / "toy.npz")]) == 40
    )
    code = main(["export", "--ckpt_path", str(out), "--out", str(out)])
    assert code == 2 and f"--out {out}: is the checkpoint this command reads" in capsys.readouterr().err


def test_fit_from_a_weights_only_checkpoint_is_a_new_run_from_its_weights(exported, monkeypatch, capsys):
    """A fine-tune: a new run folder, its step count from 0, its weights those of the checkpoint to start with."""
    folder, out = exported
    monkeypatch.chdir(folder)
    args = tiny_args(
        folder, "tuned", **{"--trainer.max_epochs": "1", "--trainer.limit_train_batches": "1", "--model.lr": "1e-12"}
    )
    assert main(["fit", *args, "--ckpt_path", str(out)]) == 0
    assert f"fine-tuning from the weights of {out}" in capsys.readouterr().out
    tuned = read_checkpoint(folder / "runs/tuned/version_0/checkpoints/last.ckpt")
    assert tuned["global_step"] == 1 and "optimizer_states" in tuned
    for name, value in read_checkpoint(out)["state_dict"].items():
        torch.testing.assert_close(tuned["state_dict"][name], value, atol=1e-6, rtol=0)


def test_a_fine_tune_may_swap_the_transferable_bond_head_for_a_bond_table(tmp_path, monkeypatch, capsys):
    """A model trained with model.transferable_bonds (as the pretrained one is) fine-tuned without: the molecule's
    own bond table and head start new, the transferable head is left behind. A fine-tune is a new run, and tests
    after fitting even where the run that made the weights did not."""
    monkeypatch.chdir(tmp_path)
    many = tiny_args(tmp_path, "many", **{"--model.transferable_bonds": "true", "--test_after_fit": "false"})
    assert main(["fit", *many]) == 0
    assert "test table written" not in capsys.readouterr().out
    out = tmp_path / "many.ckpt"
    assert main(["export", "--ckpt_path", "last", "--name", "many", "--out", str(out), "--command", "a test"]) == 0
    assert any(key.startswith("net.bond_head.") for key in read_checkpoint(out)["state_dict"])
    assert main(["fit", "--ckpt_path", str(out), "--name", "again", "--trainer.max_epochs", "1"]) == 0
    assert "test table written" in capsys.readouterr().out  # the stored config said test_after_fit false
    args = tiny_args(tmp_path, "table", **{"--trainer.max_epochs": "1", "--trainer.limit_train_batches": "1"})
    assert main(["fit", *args, "--ckpt_path", str(out)]) == 0
    assert "the bond-length head is new" in capsys.readouterr().out
    tuned = read_checkpoint(tmp_path / "runs/table/version_0/checkpoints/last.ckpt")["state_dict"]
    assert "net.bonded.length_mean" in tuned and not any(key.startswith("net.bond_head.") for key in tuned)


def ethanol_history(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    atoms = read(STRUCTURES / "ethanol.xyz")
    motion = 0.01 * np.random.default_rng(seed).normal(size=(frames, len(atoms), 3)).cumsum(axis=0)
    return atoms.positions + motion, atoms.numbers


def test_the_shipped_pretrained_model_forecasts_a_molecule_it_never_saw():
    shipped = read_checkpoint(PRETRAINED_FILE)
    assert PRETRAINED_FILE.stat().st_size < 5e6
    trained = shipped[DATA_KEY]
    sources = yaml.safe_load((ROOT / "experiments" / "pretrain.yaml").read_text())["data"]["sources"]
    assert trained["transferable"] and len(trained["atoms"]) == len(sources)  # the config it ships with made it
    held_out = [
        STRUCTURES / "ethanol.xyz",
        STRUCTURES / "aspirin.xyz",
        ROOT / "docs/results/rollout_isopropanol/isopropanol.xyz",
    ]
    for path in held_out:  # never trained on (docs/results/transfer.md)
        assert read(path).numbers.tolist() not in trained["atoms"], path.name
    provenance = shipped[PROVENANCE_KEY]
    assert "experiments/pretrain.yaml" in provenance["command"] and len(provenance["data"]) == len(sources)
    model = asteroid.load("pretrained")
    history, z = ethanol_history(model.history_frames)
    future = model.forecast(history, z=z)
    assert future.positions.shape == (model.horizon, 9, 3) and np.isfinite(future.positions).all()
    assert np.abs(future.positions - history[-1]).max() < 1.0  # a step, not a jump
    with pytest.raises(AsteroidError, match="history: holds F, which the model never saw"):
        model.forecast(history[:, :5], z=[6, 9, 1, 1, 1])


def test_a_compiled_forecast_of_the_shipped_model_gives_every_output_of_the_eager_one():
    """`rollout(..., compiled=True)` on a full-size net: the compiled step (`COMPILED_STEP`, torch's own random
    numbers, no graph break) gives the eager step's proposed frames, lengths, settled frames and their flags, next
    history and set points. On aspirin, torch 2.13's inductor once returned the settled frames as the proposed ones
    (a buffer reused while a view of it was still an output), which the alternation then restarted from: 10 of 30
    compiled 300-forecast rollouts of the aspirin model diverged."""
    net = asteroid.load("pretrained").net
    atoms = read(STRUCTURES / "aspirin.xyz")
    motion = 0.01 * np.random.default_rng(0).normal(size=(net.history, len(atoms), 3)).cumsum(axis=0)
    history = torch.tensor(atoms.positions + motion, dtype=torch.float32)[None]  # (1, H, N, 3)
    z = torch.as_tensor(atoms.numbers)[None]
    mask = torch.ones_like(z, dtype=torch.bool)
    mass = torch.as_tensor(atomic_masses[atoms.numbers], dtype=torch.float32)[None]
    target = step_energy(history, mass).mean()
    step = (history, z, mask, None, True, None, plausible_geometry(z[0], history), mass, True, target, 0.8, 4.0)
    with torch.inference_mode():
        torch.manual_seed(5)
        eager = forecast_step(net, *step)
        torch.manual_seed(5)
        compiled = COMPILED_STEP(net, *step)
    for name, value in eager._asdict().items():
        torch.testing.assert_close(getattr(compiled, name), value, atol=5e-6, rtol=0, msg=name)


def test_rollout_of_the_pretrained_model_from_one_structure(tmp_path, capsys):
    out = tmp_path / "ethanol.xyz"
    code = main(
        [
            "rollout",
            "--ckpt_path",
            "pretrained",
            "--init",
            str(STRUCTURES / "ethanol.xyz"),
            "--frames",
            "40",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    frames = read(out, index=":")
    assert len(frames) == 40 and frames[0].get_chemical_formula() == "C2H6O"
    bonds = np.linalg.norm(
        np.stack([f.positions for f in frames])[:, 0] - np.stack([f.positions for f in frames])[:, 1], axis=-1
    )
    assert np.all((bonds > 1.2) & (bonds < 1.8))  # the C-C bond stays a bond
    # its own 71-frame history would pass any check of a report: one is refused without a reference trajectory
    code = main(["rollout", "--ckpt_path", "pretrained", "--init", str(STRUCTURES / "ethanol.xyz"), "--frames", "8",
                 "--out", str(tmp_path / "r.xyz"), "--report"])  # fmt: skip
    assert code == 2 and "is one structure, with no trajectory to judge the rollout against" in capsys.readouterr().err


def test_pretrained_is_refused_with_a_line_where_it_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("asteroid.checkpoints.PRETRAINED_FILE", tmp_path / "absent.ckpt")
    code = main(["rollout", "--ckpt_path", "pretrained", "--frames", "4", "--out", str(tmp_path / "x.xyz")])
    assert code == 2 and "is not in this installation (`make pretrain` makes it)" in capsys.readouterr().err


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, on a file `my_md.xyz` of ethanol frames 0.5 fs apart (issue 30: the snippets are
    run by the tests)."""
    import re

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    history, z = ethanol_history(80)
    ase.io.write(tmp_path / "my_md.xyz", [Atoms(numbers=z, positions=frame) for frame in history])
    namespace = {}
    exec(compile(block.replace("2000", "24"), "README.md", "exec"), namespace)  # 24 frames: the same code, quicker
    future, frames = namespace["future"], namespace["frames"]
    assert future.positions.shape == (24, 9, 3) and len(frames) == 24 and frames[0].info["time_fs"] == 5.0


def test_pretraining_validation_scores_a_padded_batch_as_its_windows_one_by_one(tmp_path, monkeypatch):
    """benchmarks/pretraining_validation.py, which chose the shipped model's width: over two molecules of different
    sizes its MSE is that of each window forecast alone (padding neither scored nor moving a forecast), and one
    molecule's share (how runs trained on different molecules are compared) is that of its windows alone."""
    monkeypatch.chdir(tmp_path)
    write_toy_trajectory(tmp_path / "small.npz", z=ETHANOL_Z[:5], seed=1)
    sources = json.dumps([{"path": str(tmp_path / "toy.npz")}, {"path": str(tmp_path / "small.npz")}])
    args = tiny_args(tmp_path, "two", **{"--model.transferable_bonds": "true", "--data.sources": sources})
    assert main(["fit", *args, "--test_after_fit", "false"]) == 0
    checkpoint = str(tmp_path / "runs/two/version_0/checkpoints/last.ckpt")
    spec = importlib.util.spec_from_file_location("validation", ROOT / "benchmarks" / "pretraining_validation.py")
    validation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(validation)
    errors = validation.validation_errors(checkpoint)
    mse, count = validation.pooled(errors)

    forecaster, datamodule = load_with_data(checkpoint)
    net = forecaster.net
    datamodule.prepare_data()
    datamodule.setup("fit")
    windows = [datamodule.datasets["val"][i] for i in range(0, len(datamodule.datasets["val"]), validation.EVERY)]
    assert count == len(windows) and {len(w["z"]) for w in windows} == {5, 9}
    squared = components = 0.0
    with torch.no_grad():
        for window in windows:
            alone = collate_windows([window])
            forecast = net.generate(alone["history"], alone["z"], alone["mask"])
            squared += float((forecast - alone["target"]).square().sum())
            components += forecast.numel()
    assert mse == pytest.approx(squared / components, rel=1e-5)
    alone, small_count = validation.pooled(errors, ["small"])  # one molecule's share: its windows alone
    small = [w for w in windows if len(w["z"]) == 5]
    assert small_count == len(small) and validation.pooled(errors, ["toy", "small"]) == (mse, count)
    with torch.no_grad():
        batch = collate_windows(small)
        forecast = net.generate(batch["history"], batch["z"], batch["mask"])
    assert alone == pytest.approx(float((forecast - batch["target"]).square().mean()), rel=1e-5)
