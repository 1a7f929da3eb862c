"""runs/<name>/version_N: claimed atomically, locked while in use, found by `--ckpt_path last`; atomic checkpoints.

The same with real processes killed and run side by side: the fault cases of tests/integration/test_reliability.py."""

from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from asteroid.errors import ConfigError
from asteroid.runs import AtomicCheckpointIO, RunLogger, checkpoint_version, latest_checkpoint


def test_each_run_claims_its_own_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = RunLogger("x"), RunLogger("x")
    assert (first.version, second.version) == (0, 1)
    # another process may create a version after the listing: the claim moves on instead of sharing it
    monkeypatch.setattr(TensorBoardLogger, "_get_next_version", lambda self: 0)
    assert RunLogger("x").version == 2
    assert sorted(p.name for p in (tmp_path / "runs/x").iterdir()) == ["version_0", "version_1", "version_2"]


def test_a_run_in_use_cannot_be_continued_until_it_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    running = RunLogger("x")
    assert running.version == 0
    with pytest.raises(ConfigError, match=r"runs/x/version_0: another process is still writing this run"):
        RunLogger("x", version=0)
    running.finalize("success")
    RunLogger("x", version=0).finalize("success")


def test_continuing_a_run_removes_what_a_killed_save_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "runs/x/version_0/checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"whole")
    (checkpoints / ".last.ckpt.k3x9.tmp").write_bytes(b"half")
    RunLogger("x", version=0).finalize("success")
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]


def test_last_is_the_newest_version_with_a_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for version, last in ((0, True), (2, True), (10, True), (11, False)):
        checkpoints = tmp_path / f"runs/x/version_{version}/checkpoints"
        checkpoints.mkdir(parents=True)
        if last:
            (checkpoints / "last.ckpt").write_bytes(b"")
    newest = Path("runs/x/version_10/checkpoints/last.ckpt")
    assert latest_checkpoint("x") == newest  # by number (10 after 2), skipping a version without one
    assert latest_checkpoint("y") is None
    assert checkpoint_version("x", newest) == 10 and checkpoint_version("x", tmp_path / newest) == 10
    assert checkpoint_version("y", newest) is None and checkpoint_version("x", tmp_path / "model.ckpt") is None


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path):
    class DiskFull(AtomicCheckpointIO):
        def write(self, checkpoint, handle):
            handle.write(b"the first bytes")
            raise OSError("No space left on device")

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    with pytest.raises(OSError, match="No space left"):
        DiskFull().save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
