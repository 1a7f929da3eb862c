"""Writing outputs so that a file is either complete or absent, never half-written."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
