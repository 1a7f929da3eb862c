"""`asteroid compare`: every model on the same windows, splits, metrics and CPU-time budget, several seeds.

Each (molecule, model, seed) is one `asteroid fit` of `experiments/<molecule>.yaml` with
`experiments/models/<model>.yaml` on top, in its own process. Finished runs append their per-step test errors
(MSE, MAE, RMSD, ADE) to `<out>/accuracy.csv`, and the optimizer steps each reached within the budget to
`<out>/accuracy_steps.csv`; a rerun skips what is there, so a long comparison can be stopped and resumed.
`<out>/accuracy.md` is rewritten from them after every run. A peer's protocol (`--protocol gmn`) writes
`accuracy_gmn.*` instead. Models without parameters (last frame, extrapolation) run once, as seed 0: no split of
ours depends on the seed. `--budget-minutes 0` trains every model to its config's `max_steps` (equal steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from asteroid.accuracy_tables import (
    COLUMNS,
    ROLLOUT_COLUMNS,
    backfill,
    read_rows,
    write_markdown,
    write_rows,
    write_steps,
)
from asteroid.arguments import CommandParser, non_negative, positive
from asteroid.data.windows import PROTOCOLS
from asteroid.errors import AsteroidError, ConfigError
from asteroid.fileio import sole_writer, writable_output
from asteroid.models.baselines.extrapolation import PolynomialExtrapolation
from asteroid.peer_rollout import estag_rollout_rows
from asteroid.runs import run_name, trained_steps
from asteroid.test_table import read_model_rows


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


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="asteroid compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--molecules", nargs="+", required=True, help="experiment names (experiments/NAME.yaml)")
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="model names (experiments/models/NAME.yaml) or config files (e.g. experiments/official/"
        "estag.yaml, a model with its official training recipe)",
    )
    parser.add_argument(
        "--seeds", type=positive(int), default=3, help="seeds 0..N-1 (data split seed and training seed)"
    )
    parser.add_argument(
        "--budget-minutes",
        type=non_negative(float),
        default=5.0,
        help="training CPU time per run (single-threaded); 0: no budget, every model to its max_steps",
    )
    parser.add_argument("--protocol", default="default", choices=list(PROTOCOLS), help="window/split protocol")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="generate each molecule's trajectory this long, in a file of its own, for the peers' "
        "protocols (GMN, EGNO and ESTAG leave out 10,000 frames at each end and draw 10%% of the rest "
        "for training: 25,001 frames give their 500 training windows)",
    )
    parser.add_argument("--experiments", default="experiments", help="folder of the experiment configs")
    parser.add_argument("--out", default="docs/results", help="folder of accuracy.csv and accuracy.md")
    parser.add_argument("--runs", default="compare", help="the runs go to runs/RUNS/<protocol>/<molecule>/<model>/")
    parser.add_argument(
        "extra",
        nargs=argparse.REMAINDER,
        help="after `--`: overrides passed to every `asteroid fit` (e.g. -- --trainer.max_steps 50)",
    )
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    writable_output(args.out, "folder")
    experiments = Path(args.experiments)
    molecules = experiment_files(experiments, args.molecules, "experiment")
    models = experiment_files(experiments / "models", args.models, "model")
    suffix = "" if args.protocol == "default" else f"_{args.protocol}"
    csv_path, md_path = Path(args.out) / f"accuracy{suffix}.csv", Path(args.out) / f"accuracy{suffix}.md"
    steps_path = Path(args.out) / f"accuracy{suffix}_steps.csv"
    rollout_path = Path(args.out) / f"accuracy{suffix}_rollout.csv" if args.protocol == "estag" else None
    command = "asteroid compare " + shlex.join(argv)
    if args.frames is not None:
        from asteroid.lightning_cli import from_config

        extras = {
            molecule: extra
            + lengthened_sources(from_config(["--config", str(file), *extra]).datamodule.sources, args.frames, file)
            for molecule, file in molecules.items()
        }
    else:
        extras = dict.fromkeys(molecules, extra)
    with sole_writer(csv_path):  # a second comparison into the same table would rewrite it from a stale copy
        return compare(args, molecules, models, extras, command, csv_path, md_path, steps_path, rollout_path)


def compare(
    args,
    molecules: dict,
    models: dict,
    extras: dict,
    command: str,
    csv_path: Path,
    md_path: Path,
    steps_path: Path,
    rollout_path: Path | None,
) -> int:
    """The runs of `main`, each appended to the table as it finishes; those already in it are skipped. rollout_path:
    where ESTAG's rollout metric goes (the `estag` protocol), None for other protocols."""
    rows = read_rows(csv_path)
    done = {(r["molecule"], r["model"], r["seed"]) for r in rows}
    trained = {(r["molecule"], r["model"], r["seed"]): int(r["steps"]) for r in read_rows(steps_path)}
    equal_steps = args.budget_minutes <= 0
    backfill(rows, trained, args.protocol, equal_steps, args.runs)
    rollouts = read_rows(rollout_path) if rollout_path else []

    def save() -> None:
        write_rows(rows, csv_path)
        write_steps(trained, steps_path)
        if rollout_path:
            write_rows(rollouts, rollout_path, ROLLOUT_COLUMNS)
        write_markdown(rows, command, args.protocol, trained, args.budget_minutes, md_path, rollouts)

    facts = {}

    def arguments(molecule: str, model: str, seed) -> tuple[str, list[str]]:
        """Run name and `fit_arguments` of one run."""
        if molecule not in facts:
            facts[molecule] = data_facts(molecules[molecule], args.protocol, extras[molecule])
        name = run_name(args.protocol, molecule, model, seed, equal_steps, args.runs)
        overrides = net_overrides(net_class(models[model]), facts[molecule])
        return name, fit_arguments(
            molecules[molecule], models[model], seed, args.protocol, extras[molecule], overrides, name
        )

    if rollout_path:  # runs tested before the metric was: from their folders, where they are here
        scored = {(r["molecule"], r["model"], r["seed"]) for r in rollouts}
        for key in sorted(done - scored):
            if key[0] in molecules and key[1] in models:
                name, fit_args = arguments(*key)
                rollouts += estag_rollout_rows(name, key, fit_args)
    failures = []
    # Seeds outermost: a comparison stopped part-way leaves whole tables of fewer seeds, not a ragged one.
    for seed in range(args.seeds):
        for molecule in molecules:
            for model, model_file in models.items():
                if (molecule, model, str(seed)) in done:
                    print(f"{molecule} {model} seed {seed}: done, skipped")
                    continue
                if seed > 0 and issubclass(net_class(model_file), PolynomialExtrapolation):
                    continue  # no parameters: its seed-0 run stands for every seed
                name, fit_args = arguments(molecule, model, seed)
                try:
                    table = run_once(fit_args, args.budget_minutes, name)
                except AsteroidError as error:
                    failures.append(str(error))
                    print(f"asteroid compare: {error}", file=sys.stderr)
                    continue
                new = [
                    {"molecule": molecule, "model": model, "seed": seed, **{key: r[key] for key in COLUMNS[3:]}}
                    for r in read_model_rows(table)
                ]
                rows += new
                reached = trained_steps(name)
                if reached is not None:
                    trained[(molecule, model, str(seed))] = reached
                if rollout_path:
                    rollouts += estag_rollout_rows(name, (molecule, model, str(seed)), fit_args)
                save()
                print(
                    f"{molecule} {model} seed {seed}: mean MSE "
                    f"{np.mean([float(r['mse']) for r in new]):.4g} A^2 -> {csv_path}",
                    flush=True,
                )
    if rows:
        save()
    if failures:
        raise AsteroidError(f"{len(failures)} run(s) failed; the first: {failures[0]}")
    return 0
