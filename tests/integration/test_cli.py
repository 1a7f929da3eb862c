"""End to end through `asteroid fit / test`: checkpoints, resuming, precision, DDP and the guards on overrides."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from asteroid.cli import main
from asteroid.config import with_base_configs

from helpers import EXPERIMENTS, harmonic_frames, tiny_args

ASTEROID = shutil.which("asteroid") or str(Path(sys.executable).parent / "asteroid")


def test_config_bases_are_expanded_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("x: 1\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    argv = with_base_configs(["fit", "--config", str(tmp_path / "c.yaml"), "--trainer.max_steps", "3"])
    assert argv == [
        "fit",
        f"--config={tmp_path / 'a.yaml'}",
        f"--config={tmp_path / 'b.yaml'}",
        f"--config={tmp_path / 'c.yaml'}",
        "--trainer.max_steps",
        "3",
    ]


def test_fit_writes_checkpoints_logs_table_config_and_splits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Asteroid" in out and "constant" in out and "linear" in out and "mean" in out
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert (tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt").is_file()
    assert list((tmp_path / "runs/tiny/version_0/checkpoints").glob("best-*.ckpt"))
    assert list(run.glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["seed_everything"] == 0 and config["data"]["history"] == 3
    splits = json.loads((run / "splits.json").read_text())
    assert splits["trajectories"][0]["train"]["windows"] > 0
    table = (run / "test_metrics.csv").read_text().splitlines()
    assert table[0] == "model,step,mse,mae,rmsd,ade,bond" and len(table) == 1 + 3 * 3


def test_tensorboard_has_losses_per_step_errors_and_figures(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path), "--test_after_fit", "false"]) == 0
    events = EventAccumulator(str(tmp_path / "runs/tiny/version_0"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/forecast",
        "train/noise_nll",
        "val/mse_mean",
        "val/rmsd_mean",
        "val_mse_per_step/step_01",
        "val_mse_per_step/step_02",
    } <= scalars
    assert {"val/error_vs_horizon", "val/predicted_vs_true"} <= set(events.Tags()["images"])
    assert "config/text_summary" in events.Tags()["tensors"]


@pytest.mark.parametrize(
    "end, validated",
    [({"--trainer.max_steps": "6"}, [4, 6]), ({"--trainer.max_epochs": "2"}, [4, 8, 10])],
    ids=["max_steps", "max_epochs"],
)
def test_the_last_training_step_is_validated(tmp_path, monkeypatch, end, validated):
    # validation every 4 steps; training ends between two checks: at step 6, or after 2 epochs of 5 batches
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    args = tiny_args(
        tmp_path,
        **{
            "--trainer.val_check_interval": "4",
            "--trainer.check_val_every_n_epoch": "null",
            "--trainer.max_epochs": "4",
            "--test_after_fit": "false",
            **end,
        },
    )
    assert main(["fit", *args]) == 0
    events = EventAccumulator(str(tmp_path / "runs/tiny/version_0")).Reload()
    assert [s.step + 1 for s in events.Scalars("val/mse_mean")] == validated  # logged at the step before
    assert events.Scalars("train/loss")[-1].step + 1 == validated[-1]


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path, name="straight"), "--test_after_fit", "false"]) == 0
    crash = ["--trainer.callbacks+=helpers.CrashAtStep", "--trainer.callbacks.step=12"]
    with pytest.raises(RuntimeError, match="simulated crash at step 12"):
        main(["fit", *tiny_args(tmp_path, name="crashed"), *crash])
    last = tmp_path / "runs/crashed/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10
    assert main(["fit", *tiny_args(tmp_path, name="crashed"), "--ckpt_path", "last", "--test_after_fit", "false"]) == 0
    assert [p.name for p in (tmp_path / "runs/crashed").iterdir()] == ["version_0"]  # the run went on in place
    straight = torch.load(tmp_path / "runs/straight/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 20
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=key)


def test_cpu_time_budget_stops_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    budget = ["--trainer.callbacks+=asteroid.schedule.CPUTimeBudget", "--trainer.callbacks.minutes=0"]
    assert main(["fit", *tiny_args(tmp_path, name="budget"), *budget, "--test_after_fit", "false"]) == 0
    assert torch.load(tmp_path / "runs/budget/version_0/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path, name="never"), "--ckpt_path", "last"]) == 2
    assert "no runs/never/version_*/checkpoints/last.ckpt to resume from" in capsys.readouterr().err


def test_checkpoint_settings_that_differ_from_the_config_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path), "--trainer.max_epochs", "1", "--test_after_fit", "false"]) == 0
    ckpt = str(tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt")
    assert main(["test", *tiny_args(tmp_path), "--ckpt_path", ckpt]) == 0
    assert main(["test", *tiny_args(tmp_path), "--model.net.init_args.hidden", "32", "--ckpt_path", ckpt]) == 2
    err = capsys.readouterr().err
    assert "model.net.init_args.hidden: checkpoint 16, config 32" in err


def test_a_linked_value_set_by_the_user_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path), "--model.net.init_args.history", "5"]) == 2
    assert "model.net.init_args.history=5 conflicts with the data windows (history=3)" in capsys.readouterr().err


def test_bf16_mixed_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["fit", *tiny_args(tmp_path), "--trainer.precision", "bf16-mixed", "--trainer.fast_dev_run", "true"]) == 0
    )


def logged_scalar(run_dir: Path, tag: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir)).Reload().Scalars(tag)[-1].value


def test_ddp_with_two_cpu_processes_scores_every_window_once(tmp_path, monkeypatch):
    # 13 validation and 13 test windows (stride 4) in batches of 3: the two devices get 7 and 6 windows, in 3 and 2
    # batches, where Lightning's own sampler would repeat one window
    args = tiny_args(
        tmp_path,
        name="ddp",
        **{
            "--data.stride": "4",
            "--data.batch_size": "3",
            "--trainer.limit_val_batches": "1.0",
            "--trainer.limit_test_batches": "1.0",
        },
    )
    # DDP re-launches the command line for rank 1, so this runs the real console script.
    result = subprocess.run(
        [
            ASTEROID,
            "fit",
            *args,
            "--trainer.strategy",
            "ddp",
            "--trainer.devices",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_epochs",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Asteroid" in result.stdout and (tmp_path / "runs/ddp/version_0/checkpoints/last.ckpt").is_file()
    assert "sync_dist" not in result.stderr
    splits = json.loads((tmp_path / "runs/ddp/version_0/splits.json").read_text())["trajectories"][0]
    assert splits["val"]["windows"] == splits["test"]["windows"] == 13
    monkeypatch.chdir(tmp_path)
    [best] = (tmp_path / "runs/ddp/version_0/checkpoints").glob("best-*.ckpt")
    assert main(["test", *args, "--name", "single", "--ckpt_path", str(best)]) == 0
    tables = [
        list(csv.DictReader(open(tmp_path / f"runs/{name}/version_0/test_metrics.csv"))) for name in ("ddp", "single")
    ]
    assert len(tables[0]) == len(tables[1]) > 0
    for two_devices, one_device in zip(*tables):
        assert two_devices["model"] == one_device["model"] and two_devices["step"] == one_device["step"]
        assert float(two_devices["mse"]) == pytest.approx(float(one_device["mse"]), rel=1e-5)
    # The epoch's validation (the score that picks the best checkpoint) is the same as one device's
    assert main(["validate", *args, "--name", "single_val", "--ckpt_path", str(best)]) == 0
    for tag in ("val/mse_mean", "val/loss"):
        assert logged_scalar(tmp_path / "runs/ddp/version_0", tag) == pytest.approx(
            logged_scalar(tmp_path / "runs/single_val/version_0", tag), rel=1e-5
        )


def test_print_config_and_unknown_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(EXPERIMENTS / "ethanol.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["sources"][0]["molecule"] == "ethanol"
    assert printed["model"]["net"]["class_path"] == "asteroid.models.Asteroid"
    assert main(["fit", "--config", str(EXPERIMENTS / "ethanol.yaml"), "--model.net.init_args.hiddne", "3"]) == 2
    assert (
        capsys.readouterr().err == "asteroid: error: model.net.init_args.hiddne: Option 'hiddne' is not "
        "accepted (on the command line)\n"
    )


def test_missing_data_file_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [ASTEROID, "fit", *tiny_args(tmp_path), "--data.sources", json.dumps([{"path": "nowhere.npz"}])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "asteroid: error: nowhere.npz: file not found (set `molecule` or `structure` in the source to generate "
        "it, or name a known dataset such as md17:ethanol)"
    )
    assert "Traceback" not in result.stderr


def test_a_horizon_of_one_step_trains_and_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_args(tmp_path, **{"--data.horizon": "1", "--trainer.max_epochs": "1"})]) == 0
    table = (tmp_path / "runs/tiny/version_0/test_metrics.csv").read_text().splitlines()
    assert len(table) == 1 + 3 * 2  # model, constant, linear: step 1 and mean each


@pytest.mark.parametrize("atoms", [1, 2])
def test_a_one_or_two_atom_system_trains_tests_and_draws_its_figures(atoms, tmp_path, monkeypatch, capsys):
    """A bond needs two atoms: one atom is refused with bond constraints on (the default) and trains without."""
    R = harmonic_frames(600, atoms)
    if atoms == 2:  # an O-H pair 0.96 A apart, vibrating
        R[:, 1] = R[:, 0] + [0.96, 0.0, 0.0] + 0.02 * np.sin(0.3 * np.arange(600))[:, None]
    np.savez(tmp_path / "toy.npz", R=R, z=np.array([8, 1][:atoms]), dt_fs=0.5)
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, **{"--trainer.max_epochs": "1"})
    if atoms == 1:
        assert main(["fit", *args]) == 2
        assert "has no covalent bond to keep" in capsys.readouterr().err
        args += ["--model.bond_constraints", "false"]
    assert main(["fit", *args]) == 0
    assert "test windows: error per horizon step" in capsys.readouterr().out
    assert list(tmp_path.glob("runs/tiny/**/events.out.tfevents.*"))


@pytest.mark.parametrize("cores, threads", [(2, 1), (16, 4)])
def test_the_cli_chooses_its_threads_and_says_so_unless_told(monkeypatch, capsys, cores, threads):
    from asteroid.api.threads import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    try:
        torch.set_num_threads(3)  # torch's own choice, whatever it is
        choose_threads()
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(1)
    assert f"{threads} torch thread(s) on {cores} core(s)" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choose_threads()
    assert torch.get_num_threads() == 1 and capsys.readouterr().err == ""  # the user's choice stands


def test_fit_shows_one_bar_of_steps_and_one_test_table(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["fit", *tiny_args(tmp_path, **{"--trainer.enable_progress_bar": "true", "--trainer.max_epochs": "3"})])
        == 0
    )
    out, err = capfd.readouterr()
    bar = (out + err).replace("\r", "\n")
    assert "train step: 100%" in bar and "15/15" in bar and "val MSE (Å²)=" in bar  # 3 epochs of 5: one bar
    assert "Epoch" not in bar
    for noise in ("GPU available", "Tip:", "Seed set to", "Test metric"):
        assert noise not in out + err, noise
    assert out.count("test windows: error per horizon step") == 1 and "MSE Å²" in out
    assert "bond: mean |error| of the covalent bond lengths" in out


def test_a_callback_the_config_lists_replaces_the_default_of_its_kind(tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from asteroid.lightning_cli import from_config
    from asteroid.training.callbacks import ConfigInCheckpoint

    monkeypatch.chdir(tmp_path)

    def callbacks(*extra):
        cli = from_config(["--config", str(EXPERIMENTS / "base.yaml"), *tiny_args(tmp_path)[2:], *extra])
        return cli.trainer.callbacks

    default = callbacks()
    assert [c.logging_interval for c in default if isinstance(c, LearningRateMonitor)] == ["step"]
    assert sum(isinstance(c, ModelCheckpoint) for c in default) == 2
    own = callbacks(
        "--trainer.callbacks+=LearningRateMonitor",
        "--trainer.callbacks.logging_interval=epoch",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.monitor=val/loss",
    )
    assert [c.logging_interval for c in own if isinstance(c, LearningRateMonitor)] == ["epoch"]
    assert [c.monitor for c in own if isinstance(c, ModelCheckpoint)] == ["val/loss"]
    assert any(isinstance(c, ConfigInCheckpoint) for c in own)  # what every run needs stays, whatever is listed


def test_a_checkpoint_alone_resumes_a_run_validated_by_steps(tmp_path, monkeypatch, capfd):
    """base.yaml validates every N steps (`check_val_every_n_epoch: null`): the config stored in the checkpoint keeps
    that null, so `fit --ckpt_path FILE` alone goes on (issue 30: it ended in Lightning's val_check_interval error)."""
    monkeypatch.chdir(tmp_path)
    by_steps = {
        "--trainer.val_check_interval": "3",
        "--trainer.check_val_every_n_epoch": "null",
        "--trainer.max_epochs": "-1",
        "--trainer.max_steps": "6",
        "--trainer.limit_train_batches": "50",
        "--test_after_fit": "false",
    }
    assert main(["fit", *tiny_args(tmp_path, **by_steps)]) == 0
    last = tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt"
    capfd.readouterr()
    assert (
        main(["fit", "--ckpt_path", str(last), "--trainer.max_steps", "9", "--trainer.enable_progress_bar", "true"])
        == 0
    )
    assert torch.load(last, weights_only=True)["global_step"] == 9
    lines = "".join(capfd.readouterr()).replace("\r", "\n").splitlines()
    bar = [line for line in lines if line.startswith(("train step", "Training"))]  # the training bar's updates
    assert bar[-1].startswith("train step: 100%") and "| 9/9 [" in bar[-1], bar  # the run's steps, not `9/?`
    assert not any(line.startswith("train step") and "/?" in line for line in bar), bar


def test_a_run_that_fails_before_logging_leaves_no_empty_version(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "short.npz", R=np.random.default_rng(0).random((30, 3, 3)), z=np.array([8, 1, 1]), dt_fs=0.5)
    args = ["--config", str(EXPERIMENTS / "base.yaml"), "--data.sources", '[{"path": "short.npz"}]', "--name", "short"]
    assert main(["fit", *args]) == 2
    assert "trajectory too short" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "short").exists()  # (issue 30: failed runs left empty versions)


def test_the_model_summary_states_no_flops_it_did_not_count(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, **{"--trainer.max_epochs": "1", "--test_after_fit": "false"})
    assert main(["fit", *args, "--trainer.enable_model_summary", "true"]) == 0
    printed = capsys.readouterr().out
    assert "Trainable params" in printed and "Flops" not in printed and "FLOPs" not in printed  # (issue 30: "0")
