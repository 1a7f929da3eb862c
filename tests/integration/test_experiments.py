"""Every shipped experiment config builds and runs (fast_dev_run), generating its data the way a user's run does."""

import json
from pathlib import Path

import pytest
import yaml

from asteroid.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# The molecules, whose data the generator makes; the protein (adk.yaml) runs on its excerpt in test_protein.py, the
# many-molecule pretraining (pretrain.yaml) in test_pretrained.py.
CONFIGS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p.name not in ("base.yaml", "adk.yaml", "pretrain.yaml"))


def test_every_molecule_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert names == {"aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic", "toluene", "uracil"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_experiment_runs(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = yaml.safe_load(config.read_text())["data"]["sources"][0]
    # The config's own source, shortened: missing, so prepare_data generates it with GFN2-xTB MD.
    small = {**source, "path": str(tmp_path / Path(source["path"]).name), "frames": 240}
    code = main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--data.spacing",
            "1",
            "--data.sources",
            json.dumps([small]),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert code == 0
    assert (tmp_path / Path(source["path"]).name).is_file()
    assert "Asteroid" in capsys.readouterr().out  # the test table was printed


MODEL_PRESETS = sorted((EXPERIMENTS / "models").glob("*.yaml"))


@pytest.mark.parametrize("preset", MODEL_PRESETS, ids=lambda p: p.stem)
def test_model_preset_runs(preset, tmp_path, monkeypatch, capsys):
    """Every model `asteroid compare` can run (ASTEROID, its ablations, the baselines) trains and tests."""
    from asteroid.studies.comparison import net_class, net_overrides

    from helpers import write_toy_trajectory

    monkeypatch.chdir(tmp_path)
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=300)
    facts = {"n_atoms": 9, "history_offsets": [0, 1, 2], "target_offsets": [3, 4]}
    code = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "base.yaml"),
            "--config",
            str(preset),
            "--trainer.fast_dev_run",
            "true",
            "--data.sources",
            json.dumps([{"path": str(tmp_path / "toy.npz")}]),
            "--data.spacing",
            "1",
            "--data.history",
            "3",
            "--data.horizon",
            "2",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
            *net_overrides(net_class(preset), facts),
        ]
    )
    assert code == 0
    assert net_class(preset).__name__ in capsys.readouterr().out  # its row in the test table


OFFICIAL_RECIPES = sorted((EXPERIMENTS / "official").glob("*.yaml"))


@pytest.mark.parametrize("recipe", OFFICIAL_RECIPES, ids=lambda p: p.stem)
def test_official_recipe_runs_on_its_protocol(recipe, tmp_path, monkeypatch, capsys):
    """experiments/official/<peer>.yaml: the peer's model with its preset, batch size, optimizer and budget."""
    from helpers import write_toy_trajectory

    monkeypatch.chdir(tmp_path)
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=20401)  # the peers leave out 10,000 frames at each end
    code = main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "base.yaml"),
            "--config",
            str(recipe),
            "--name",
            "official",
            "--trainer.max_steps",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
            "--data.sources",
            json.dumps([{"path": str(tmp_path / "toy.npz")}]),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert code == 0
    config = yaml.safe_load(next((tmp_path / "runs/official").glob("version_*/config.yaml")).read_text())
    assert config["data"]["protocol"] == recipe.stem and config["data"]["batch_size"] == 100
    assert config["model"]["lr_schedule"] == "constant" and not config["model"]["rotation_augmentation"]
    assert config["model"]["net"]["class_path"].lower().endswith(recipe.stem)
    splits = json.loads(next((tmp_path / "runs/official").glob("version_*/splits.json")).read_text())
    assert splits["heavy_atoms"] and splits["trajectories"][0]["train"]["windows"] == 40
