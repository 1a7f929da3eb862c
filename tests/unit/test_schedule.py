"""Budget-shaped schedules: warm-up, cosine decay and the scheduled-sampling ramp end when the CPU budget ends."""

import math

import pytest
import pytorch_lightning as pl

from asteroid.lightning_cli import from_config
from asteroid.schedule import CPUTimeBudget, warmup_cosine

from helpers import tiny_args


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, 0.1) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0.3, 0.0) == pytest.approx(0.5 * (1 + math.cos(0.3 * math.pi)))
    assert warmup_cosine(0.0, 0.1, step_share=0.01) == pytest.approx(0.1)  # the first step counts itself
    assert warmup_cosine(0.0, 0.5, step_share=1.0) == 1.0


def test_the_budget_fraction_is_zero_before_training_starts():
    budget = CPUTimeBudget(minutes=1.0, clock=lambda: 1000.0)
    assert budget.fraction_used() == 0.0


def test_a_resumed_budget_goes_on_from_what_its_checkpoint_spent():
    now = [100.0]
    budget = CPUTimeBudget(minutes=1.0, clock=lambda: now[0])
    budget.on_train_start(None, None)
    now[0] = 130.0
    state = budget.state_dict()
    assert state == {"spent": 30.0} and budget.fraction_used() == 0.5
    resumed = CPUTimeBudget(minutes=1.0, clock=lambda: now[0])
    resumed.load_state_dict(state)
    assert resumed.fraction_used() == 0.5  # before training starts again: what the checkpoint spent
    resumed.on_train_start(None, None)
    now[0] = 142.0
    assert resumed.fraction_used() == pytest.approx(0.7)


class Recorder(pl.Callback):
    """(step, learning rate, scheduled-sampling probability) at the start of every training step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.seen.append((trainer.global_step, lr, pl_module.sampling_prob))


def test_a_cpu_budget_shapes_the_schedule_with_a_fake_clock(tmp_path, monkeypatch):
    """6 fake CPU-seconds per step and a 1-minute budget: the run ends at step 10 of max_steps 1000, and its
    learning rate and sampling ramp follow 10 steps, not 1000."""
    monkeypatch.chdir(tmp_path)
    cli = from_config(
        tiny_args(
            tmp_path,
            **{
                "--trainer.max_steps": "1000",
                "--trainer.max_epochs": "-1",
                "--trainer.limit_train_batches": "1.0",
                "--model.warmup_steps": "200",
                "--model.max_sampling_prob": "0.5",
                "--model.sampling_ramp": "0.5",
            },
        )
    )
    recorder = Recorder()
    trainer = None
    budget = CPUTimeBudget(minutes=1.0, clock=lambda: 6.0 * trainer.global_step)
    trainer = pl.Trainer(
        max_steps=1000,
        callbacks=[budget, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)

    assert trainer.global_step == 10
    steps, lrs, sampling = zip(*recorder.seen)
    assert steps == tuple(range(10))
    peak = cli.model.hparams.lr
    warmup = 200 / 1000  # warm-up is a share of max_steps: 20% of the budget, two of its ten steps
    for step, lr in zip(steps, lrs):
        assert lr == pytest.approx(peak * warmup_cosine(step / 10, warmup, 1 / 1000), rel=1e-6), step
    assert lrs[0] == pytest.approx(peak * (1 / 1000) / warmup)  # the first step counts itself: its rate is not 0
    assert lrs[2] == pytest.approx(peak)  # warm-up over at 20% of the budget, not at step 200
    assert lrs[9] < 0.05 * peak  # nearly annealed at the budget's last step
    assert sampling == pytest.approx([0.5 * min(1.0, step / 10 / 0.5) for step in steps])
    assert sampling[5] == 0.5  # the ramp ends half-way through the budget, at step 5


def test_without_a_budget_the_schedule_follows_max_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = from_config(
        tiny_args(
            tmp_path,
            **{
                "--trainer.max_steps": "8",
                "--trainer.max_epochs": "-1",
                "--trainer.limit_train_batches": "1.0",
                "--model.warmup_steps": "2",
            },
        )
    )
    recorder = Recorder()
    trainer = pl.Trainer(
        max_steps=8,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    peak = cli.model.hparams.lr
    lrs = [lr for _, lr, _ in recorder.seen]
    # (step + 1) / warmup_steps, then a cosine over (step - warmup_steps) / (max_steps - warmup_steps)
    assert lrs == pytest.approx(
        [peak * f for f in (0.5, 1.0)] + [peak * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 8)]
    )


def test_the_budget_spent_travels_with_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(
        tmp_path,
        **{"--trainer.max_steps": "1000", "--trainer.max_epochs": "-1", "--trainer.limit_train_batches": "1.0"},
    )
    cli = from_config(args)
    trainer = None
    budget = CPUTimeBudget(minutes=1.0, clock=lambda: 6.0 * trainer.global_step)  # 6 fake CPU-seconds per step
    trainer = pl.Trainer(
        max_steps=4,
        callbacks=[budget],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    trainer.save_checkpoint(tmp_path / "four.ckpt")
    resumed_budget = CPUTimeBudget(minutes=1.0, clock=lambda: 0.0)
    resumed = pl.Trainer(
        max_steps=5,
        callbacks=[resumed_budget],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    cli = from_config(args)
    resumed.fit(cli.model, datamodule=cli.datamodule, ckpt_path=tmp_path / "four.ckpt")
    assert resumed_budget.spent_before == 24.0  # the four steps before the checkpoint
