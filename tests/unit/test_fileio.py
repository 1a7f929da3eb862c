"""Writing outputs: complete or absent, refused before the work when they cannot be written, a full disk said so."""

import errno
import os
import signal

import pytest

from asteroid.errors import AsteroidError, ConfigError
from asteroid.fileio import atomic_output, scratch_array, writable_output


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(path, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_full_disk_is_said_as_such_and_nothing_is_left(tmp_path):
    path = tmp_path / "pred.npz"
    with pytest.raises(AsteroidError, match="pred.npz: the disk is full; nothing was written"):
        with atomic_output(path) as handle:
            handle.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_frames_on_disk_take_their_room_up_front_and_a_full_disk_is_said(tmp_path, monkeypatch):
    """A disk filling under a memory map would kill the process (SIGBUS): the room is taken before any frame."""
    with scratch_array(tmp_path, (2, 3)) as frames:
        frames[:] = 1.5
        assert frames.sum() == 9.0 and list(tmp_path.iterdir()) == []

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(AsteroidError, match="no room for the 0.04 GB of frames"):
        with scratch_array(tmp_path, (10_000_000,)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_outputs_that_cannot_be_written_are_refused_naming_the_file(tmp_path):
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ConfigError, match="folder.json: is a directory; give a file name"):
        writable_output(tmp_path / "folder.json")
    with pytest.raises(ConfigError, match="blocker/out.json: cannot be created, .*blocker is a file"):
        writable_output(tmp_path / "blocker" / "out.json")
    with pytest.raises(ConfigError, match="blocker: is a file; give a folder"):
        writable_output(tmp_path / "blocker", "folder")
    assert writable_output(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_a_writer_that_hides_the_full_disk_in_its_own_error_is_still_said_as_such(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError of its own: atomic_output asks the disk."""
    monkeypatch.setattr("asteroid.fileio._nearly_full", lambda folder: True)
    with pytest.raises(AsteroidError, match="model.ckpt: the disk is full; nothing was written"):
        with atomic_output(tmp_path / "model.ckpt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_command_writes_leaves_no_file_and_says_so(tmp_path, capsys, signum):
    from asteroid.cli import run_interruptible

    out = tmp_path / "out.xyz"

    def command(argv):
        with atomic_output(out, "w") as handle:
            handle.write("half of it")
            os.kill(os.getpid(), signum)  # arrives while the file is being written
            handle.write("the rest")
        return 0

    assert run_interruptible(command, []) == 128 + signum
    assert list(tmp_path.iterdir()) == []  # neither the output nor a hidden temporary
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"asteroid: stopped by {signal.Signals(signum).name}; outputs being written were removed, finished ones kept"
    ]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
