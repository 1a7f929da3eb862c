"""One run of `asteroid compare`: the experiment and model configs it combines, the data facts some nets need, the
arguments of its `asteroid fit`, and the child process that trains and tests it."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from asteroid.errors import AsteroidError, ConfigError


def experiment_files(experiments: Path, names: list[str], kind: str) -> dict[str, Path]:
    """{name: config file}: NAME is experiments/NAME.yaml, and a path ending in .yaml is itself (named by its stem)."""
    files = {Path(name).stem: Path(name) if name.endswith(".yaml") else experiments / f"{name}.yaml" for name in names}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"no {kind} config {', '.join(missing)}")
    return files


def lengthened_sources(sources: list, frames: int, config: Path) -> list[str]:
    """`--data.sources` override: each generated trajectory `frames` long, in a file of its own beside the original.

    The peers' random-start protocols leave 10,000 frames out at each end, which a default 20,000-frame generated
    trajectory cannot give; the default protocol's table keeps using the original file.
    """
    longer = []
    for source in sources:
        if source.molecule is None:
            raise ConfigError(
                f"{config}: --frames lengthens generated trajectories only, and {source.path} is a "
                "file of its own (it is as long as it is)"
            )
        path = Path(source.path)
        longer.append(
            dataclasses.replace(
                source, path=str(path.with_name(f"{path.stem}_{frames}frames{path.suffix}")), frames=frames
            )
        )
    return ["--data.sources", json.dumps([dataclasses.asdict(s) for s in longer])]


def net_class(model_file: Path):
    class_path = yaml.safe_load(model_file.read_text())["model"]["net"]["class_path"]
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def data_facts(molecule_file: Path, protocol: str, extra: list[str]) -> dict:
    """Atom count and window offsets of an experiment's data (generating it if missing), for nets that need them."""
    from asteroid.lightning_cli import from_config

    dm = from_config(["--config", str(molecule_file), "--data.protocol", protocol, *extra]).datamodule
    dm.prepare_data()
    dm.setup("fit")
    return {
        "n_atoms": max(len(t.z) for t in dm.trajectories),
        "history_offsets": list(dm.layout.history_offsets),
        "target_offsets": list(dm.layout.target_offsets),
    }


def net_overrides(cls, facts: dict) -> list[str]:
    """`--model.net.init_args.X value` for the data facts a net's constructor asks for (n_atoms, offsets)."""
    wanted = inspect.signature(cls.__init__).parameters
    return [
        arg
        for key, value in facts.items()
        if key in wanted
        for arg in (f"--model.net.init_args.{key}", yaml.safe_dump(value, default_flow_style=True).strip())
    ]


def fit_arguments(
    molecule_file: Path, model_file: Path, seed: int, protocol: str, extra: list[str], overrides: list[str], name: str
) -> list[str]:
    """The `asteroid fit` arguments of one run (its budget aside): they also rebuild its model and data."""
    return [
        "--config",
        str(molecule_file),
        "--config",
        str(model_file),
        "--name",
        name,
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
        "--data.protocol",
        protocol,
        *overrides,
        *extra,
    ]


def run_once(arguments: list[str], budget_minutes: float, name: str) -> Path:
    """One fit + test of `fit_arguments` in a child process; returns its test_metrics.csv."""
    budget = (
        ["--trainer.callbacks+=asteroid.schedule.CPUTimeBudget", f"--trainer.callbacks.minutes={budget_minutes}"]
        if budget_minutes > 0
        else []
    )
    command = [
        sys.executable,
        "-m",
        "asteroid.cli",
        "fit",
        *arguments,
        *budget,
        "--trainer.enable_progress_bar",
        "false",
    ]
    print("$ " + shlex.join(command), flush=True)
    # One thread per run, so that CPU time measures the run's own compute. It is still the machine's: two of our
    # machines differed 1.5-2x in steps per CPU-minute, so a table's runs belong on one machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise AsteroidError(f"{name}: the run failed ({tail})")
    versions = sorted(Path("runs", name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1] / "test_metrics.csv"
