"""Writing outputs so that a file is either complete or absent, never half-written."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from asteroid.errors import AsteroidError, ConfigError


def writable_output(path: str | os.PathLike, kind: str = "file") -> Path:
    """Refuse, before any work, an output that cannot be written: `path` is a directory (or, for kind "folder", a
    file), or its folder cannot be created or written to. Returns the path."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file; give a folder")
    existing = nearest_existing(path if kind == "folder" else path.parent)
    if not existing.is_dir():
        raise ConfigError(f"{path}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot be written, {existing} is not writable")
    try:  # permissions do not tell everything (root, read-only mounts, /proc): try it
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".asteroid-probe-"):
            pass
    except OSError as error:
        raise ConfigError(f"{path}: cannot be written in {existing} ({error.strerror})") from None
    return path


def nearest_existing(folder: str | os.PathLike) -> Path:
    """`folder` or its nearest ancestor that exists (what a command that makes `folder` writes in first)."""
    return next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), Path("."))


def not_an_input(out: str | os.PathLike, inputs: list[tuple[str, object]], option: str = "--out") -> None:
    """Refuse, before any work, an output that is one of the files the command reads (`inputs`: (what it is, its
    path or None)): writing it would replace that input."""
    out = Path(out)
    for what, path in inputs:
        if path is None or not Path(str(path)).exists():
            continue
        path = Path(str(path))
        same = out.exists() and os.path.samefile(out, path)
        if same or out.resolve() == path.resolve():
            raise ConfigError(f"{option} {out}: is the {what} this command reads; give another file")


@contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp"):
    """Open a temporary file beside `path` (its name is `handle.name`); when the block ends without error it
    replaces `path`, otherwise it is deleted. A check that must pass before `path` appears goes inside the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; outputs get the usual permissions
    try:
        # newline="" writes text as given (what the csv module expects); binary modes take no newline argument
        with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            yield handle
        os.replace(tmp, path)
    except Exception as error:
        # torch.save and other C++ writers report a full disk as a RuntimeError of their own: ask the disk
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _nearly_full(path.parent)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise AsteroidError(f"{path}: the disk is full; nothing was written (free space and run again)") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def scratch_array(folder: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32):
    """A numpy array of `shape` on disk: a memory map of an unnamed temporary file in `folder`, so that memory holds
    only the pages in use; the system removes the file when the block ends or the process does, however it ends.
    A `folder` yet to be made: its nearest existing ancestor, on the same disk."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with tempfile.TemporaryFile(dir=nearest_existing(folder)) as handle:
        try:  # the whole size now: a disk that fills under a memory map kills the process (SIGBUS)
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise AsteroidError(f"{folder}: no room for the {size / 1e9:.3g} GB of frames ({error.strerror})") from None
        yield np.memmap(handle, dtype=dtype, mode="r+", shape=shape)


def free_disk(folder: str | os.PathLike) -> int:
    """Bytes this process may still write on `folder`'s filesystem (its nearest existing ancestor's)."""
    stat = os.statvfs(nearest_existing(folder))
    return stat.f_bavail * stat.f_frsize


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB left for us on `folder`'s filesystem (a write that just failed filled it)."""
    try:
        return free_disk(folder) < 2**20
    except OSError:
        return False


@contextmanager
def sole_writer(path: str | os.PathLike):
    """While inside, this process is the only one making `path`: a second one stops with AsteroidError instead of
    computing the same file beside it. The lock (flock on `.<name>.lock` beside `path`) goes with the process, even
    when it is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_file = path.with_name(f".{path.name}.lock")
    lock = exclusive_lock(lock_file, os.O_CREAT | os.O_RDWR)
    if lock is None:
        raise AsteroidError(f"{path}: another process is making this file now; wait for it to finish")
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)  # while held: whoever opened it before gets it only once this one is done
        os.close(lock)


def exclusive_lock(path: Path, flags: int = os.O_RDONLY) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None if another process holds it. The system
    drops the lock when the descriptor is closed or the process dies (SIGKILL included)."""
    lock = os.open(path, flags, 0o666 & ~_umask())
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None
    return lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
