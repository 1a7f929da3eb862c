"""Machinery of the reliability sweep (tests/integration/test_reliability.py): run a case where a crash or a hang
cannot take the test session with it, and write docs/reliability.md from what the cases did."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from asteroid.fileio import atomic_output


@dataclass
class Outcome:
    """What a call did: its return value (repr), or the exception it raised; everything it printed; or a hang."""

    returned: str | None = None
    error: str | None = None  # exception type name
    message: str = ""
    output: str = ""  # stdout and stderr, C libraries' included
    hung: bool = False

    @property
    def last_line(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else ""


def isolated(function, *args, timeout: float = 60.0, **kwargs) -> Outcome:
    """`function(*args, **kwargs)` in a forked child: its file descriptors 1 and 2 captured, a hang killed."""
    with tempfile.TemporaryDirectory() as scratch:
        output, result = Path(scratch, "output"), Path(scratch, "result.json")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the test session
            try:
                _run_child(function, args, kwargs, output, result)
            finally:
                os._exit(0)
        deadline = time.monotonic() + timeout
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Outcome(hung=True, output=output.read_text(errors="replace") if output.exists() else "")
            time.sleep(0.005)
        outcome = Outcome(**json.loads(result.read_text())) if result.exists() else Outcome(error="died")
        outcome.output = output.read_text(errors="replace")
        return outcome


def _run_child(function, args, kwargs, output: Path, result: Path) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    outcome = {}
    try:
        outcome["returned"] = repr(function(*args, **kwargs))
    except SystemExit as exit_:
        outcome["returned"] = repr(exit_.code)
    except BaseException as error:
        traceback.print_exc()  # what the user would see
        outcome.update(error=type(error).__name__, message=str(error))
    sys.stdout.flush()
    sys.stderr.flush()
    result.write_text(json.dumps(outcome))


@contextmanager
def time_limit(seconds: float):
    """TimeoutError when the block runs longer (for Python-level code; C code is run `isolated`)."""

    def hang(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """Outcomes of the sweep's cases by section, written as markdown once every case has one."""

    def __init__(self, sections: dict[str, dict[str, str]], temp_root: Path):
        self.sections = sections  # title -> {case id: what the case does}
        self.seen: dict[str, str] = {}
        self.temp_root = re.escape(str(temp_root))

    def record(self, case_id: str, outcome: str) -> None:
        # temporary folders differ from run to run: keep the file names only
        self.seen[case_id] = re.sub(self.temp_root + r"/[^/ ]+/", "", outcome)

    def complete(self) -> bool:
        return all(case_id in self.seen for cases in self.sections.values() for case_id in cases)

    def write(self, path: Path, intro: str, notes: str) -> None:
        lines = ["# Reliability sweep", "", intro, ""]
        for title, cases in self.sections.items():
            lines += [f"## {title}", "", "| case | what | how it ended |", "|---|---|---|"]
            lines += [
                f"| `{case_id}` | {_cell(what)} | {_cell(self.seen[case_id])} |" for case_id, what in cases.items()
            ]
            lines.append("")
        with atomic_output(path, "w") as handle:
            handle.write("\n".join(lines + [notes, ""]))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
