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
import csv
import dataclasses
import importlib
import inspect
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from asteroid.arguments import CommandParser, non_negative, positive
from asteroid.data.windows import PROTOCOLS
from asteroid.errors import AsteroidError, ConfigError
from asteroid.fileio import atomic_output, sole_writer, writable_output
from asteroid.models.baselines.extrapolation import PolynomialExtrapolation
from asteroid.module import REFERENCE_ORDERS

COLUMNS = ["molecule", "model", "seed", "step", "mse", "mae", "rmsd", "ade"]
STEPS_COLUMNS = ["molecule", "model", "seed", "steps"]  # optimizer steps each run reached within the budget


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


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(rows: list[dict], path: Path, columns: list[str] = COLUMNS) -> None:
    with atomic_output(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def run_once(
    molecule_file: Path,
    model_file: Path,
    seed: int,
    budget_minutes: float,
    protocol: str,
    extra: list[str],
    overrides: list[str],
    name: str,
) -> Path:
    """One fit + test in a child process; returns its test_metrics.csv."""
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
        *budget,
        "--trainer.enable_progress_bar",
        "false",
        *overrides,
        *extra,
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


def run_name(protocol: str, molecule: str, model: str, seed, equal_steps: bool = False, group: str = "compare") -> str:
    return f"{group}/{protocol}{'-equal-steps' if equal_steps else ''}/{molecule}/{model}/seed{seed}"


def newest(name: str, file_name: str) -> Path | None:
    """The newest `file_name` in run `name`'s folder, or None when the run is not here."""
    found = sorted(Path("runs", name).glob(f"**/{file_name}"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def trained_steps(name: str) -> int | None:
    """Optimizer steps of run `name` (its newest last.ckpt; 0 when it tested without saving one, as models without
    parameters do), or None when its folder is not here."""
    checkpoint = newest(name, "last.ckpt")
    if checkpoint is None:
        return 0 if newest(name, "test_metrics.csv") is not None else None
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


def model_rows(test_metrics: Path) -> list[dict]:
    """The trained model's per-step rows of a run's test table (not the reference forecasts, not the mean)."""
    return [r for r in read_rows(test_metrics) if r["model"] not in REFERENCE_ORDERS and r["step"] != "mean"]


def backfill(rows: list[dict], trained: dict, protocol: str, equal_steps: bool, group: str = "compare") -> None:
    """Complete, from the run folders that are here, what older versions did not record: steps and ADE."""
    for key in {(r["molecule"], r["model"], r["seed"]) for r in rows}:
        name = run_name(protocol, *key, equal_steps, group)
        if key not in trained and (reached := trained_steps(name)) is not None:
            trained[key] = reached
        lacking = [r for r in rows if (r["molecule"], r["model"], r["seed"]) == key and not r.get("ade")]
        if lacking and (test_metrics := newest(name, "test_metrics.csv")) is not None:
            ade = {r["step"]: r["ade"] for r in model_rows(test_metrics)}
            for r in lacking:
                r["ade"] = ade.get(r["step"], "")


def spread(values: np.ndarray) -> str:
    """Mean, and ± the standard deviation over seeds when there are several."""
    return f"{values.mean():.4g}" + (f" ± {values.std():.2g}" if len(values) > 1 else "")


def markdown(
    rows: list[dict], command: str, protocol: str = "default", trained: dict | None = None, budget_minutes: float = 5.0
) -> str:
    """Mean +- std over seeds of the MSE per horizon step and averaged; the best mean per molecule in bold.

    trained: {(molecule, model, seed): optimizer steps}, shown as their mean over the seeds that have one."""
    trained = trained or {}
    recipe = PROTOCOLS[protocol]
    if budget_minutes > 0:
        training = (
            f"trained single-threaded until a {budget_minutes:g}-minute CPU-time budget or the config's "
            "`max_steps`, whichever comes first; learning-rate warm-up and decay and the scheduled-sampling "
            "ramp follow the fraction of that budget used, so every model ends its schedule"
        )
        steps_note = "under one budget, a cheaper model takes more"
    else:
        training = "trained single-threaded to the config's `max_steps`, with no time budget (equal steps)"
        steps_note = "every trained model reaches its `max_steps`, so quality per step and speed can be told apart"
    lines = [
        "# Accuracy: test MSE per horizon step (Angstrom^2, mean over atoms and x, y, z; mean ± std over seeds)",
        "",
        f"Command: `{command}`",
        "",
        f"Protocol `{protocol}`: {recipe.description}.",
        "",
        f"Scored: {recipe.scored}. Test windows against training windows: {recipe.overlap}.",
        "",
        "Each run is `asteroid fit` of `experiments/<molecule>.yaml` with `experiments/models/<model>.yaml` on "
        f"top, {training}, then tested on the protocol's test windows with the checkpoint of best validation "
        "loss. Lower is better; the best mean per molecule is in bold. `steps` is the number of optimizer steps a "
        f"run reached (mean over seeds): {steps_note}; models without parameters take none and run once, as "
        "their forecasts do not depend on the seed.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU.",
        "",
    ]
    for molecule in sorted({r["molecule"] for r in rows}):
        of_molecule = [r for r in rows if r["molecule"] == molecule]
        steps = sorted({int(r["step"]) for r in of_molecule})
        models = sorted({r["model"] for r in of_molecule})
        table = {}  # model -> (per-step (S, seeds) array)
        for model in models:
            per_seed = {}
            for r in of_molecule:
                if r["model"] == model:
                    per_seed.setdefault(r["seed"], {})[int(r["step"])] = float(r["mse"])
            table[model] = np.array([[values[s] for s in steps] for values in per_seed.values()])  # (seeds, S)
        best = min(models, key=lambda m: table[m].mean())
        lines += [
            f"## {molecule}",
            "",
            "| model | seeds | steps | " + " | ".join(f"step {s}" for s in steps) + " | mean |",
            "|---|---|---|" + "---|" * (len(steps) + 1),
        ]
        for model in sorted(models, key=lambda m: table[m].mean()):
            values = table[model]
            cells = [spread(values[:, i]) for i in range(len(steps))]
            mean = spread(values.mean(axis=1))
            if model == best:
                mean = f"**{mean}**"
            reached = [n for (m, name, _), n in trained.items() if (m, name) == (molecule, model)]
            reached = f"{np.mean(reached):.0f}" if reached else "?"
            lines.append(f"| {model} | {len(values)} | {reached} | " + " | ".join(cells) + f" | {mean} |")
        lines += [""] + displacement_table(of_molecule, steps[-1])
    return "\n".join(lines)


def displacement_table(rows: list[dict], last_step: int) -> list[str]:
    """ADE and FDE per model (EqMotion's metrics) from the rows that have them; no lines when none has."""
    ade, fde = {}, {}
    for r in rows:
        if r.get("ade"):
            ade.setdefault(r["model"], []).append(float(r["ade"]))
            if int(r["step"]) == last_step:
                fde.setdefault(r["model"], []).append(float(r["ade"]))
    if not ade:
        return []
    lines = [
        "ADE and FDE (Angstrom): the mean distance between predicted and true atom positions, averaged over "
        "the horizon steps and at the last step (mean over seeds).",
        "",
        "| model | ADE | FDE |",
        "|---|---|---|",
    ]
    lines += [
        f"| {model} | {np.mean(ade[model]):.4g} | {np.mean(fde.get(model, [np.nan])):.4g} |"
        for model in sorted(ade, key=lambda m: np.mean(ade[m]))
    ]
    return lines + [""]


def write_steps(trained: dict, path: Path) -> None:
    rows = [dict(zip(STEPS_COLUMNS, (*key, steps))) for key, steps in sorted(trained.items())]
    write_rows(rows, path, STEPS_COLUMNS)


def write_markdown(
    rows: list[dict], command: str, protocol: str, trained: dict, budget_minutes: float, path: Path
) -> None:
    with atomic_output(path, "w") as handle:
        handle.write(markdown(rows, command, protocol, trained, budget_minutes))


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
        return compare(args, molecules, models, extras, command, csv_path, md_path, steps_path)


def compare(
    args, molecules: dict, models: dict, extras: dict, command: str, csv_path: Path, md_path: Path, steps_path: Path
) -> int:
    """The runs of `main`, each appended to the table as it finishes; those already in it are skipped."""
    rows = read_rows(csv_path)
    done = {(r["molecule"], r["model"], r["seed"]) for r in rows}
    trained = {(r["molecule"], r["model"], r["seed"]): int(r["steps"]) for r in read_rows(steps_path)}
    equal_steps = args.budget_minutes <= 0
    backfill(rows, trained, args.protocol, equal_steps, args.runs)
    failures, facts = [], {}
    # Seeds outermost: a comparison stopped part-way leaves whole tables of fewer seeds, not a ragged one.
    for seed in range(args.seeds):
        for molecule, molecule_file in molecules.items():
            for model, model_file in models.items():
                if (molecule, model, str(seed)) in done:
                    print(f"{molecule} {model} seed {seed}: done, skipped")
                    continue
                if seed > 0 and issubclass(net_class(model_file), PolynomialExtrapolation):
                    continue  # no parameters: its seed-0 run stands for every seed
                if molecule not in facts:
                    facts[molecule] = data_facts(molecule_file, args.protocol, extras[molecule])
                name = run_name(args.protocol, molecule, model, seed, equal_steps, args.runs)
                try:
                    table = run_once(
                        molecule_file,
                        model_file,
                        seed,
                        args.budget_minutes,
                        args.protocol,
                        extras[molecule],
                        net_overrides(net_class(model_file), facts[molecule]),
                        name,
                    )
                except AsteroidError as error:
                    failures.append(str(error))
                    print(f"asteroid compare: {error}", file=sys.stderr)
                    continue
                new = [
                    {"molecule": molecule, "model": model, "seed": seed, **{key: r[key] for key in COLUMNS[3:]}}
                    for r in model_rows(table)
                ]
                rows += new
                reached = trained_steps(name)
                if reached is not None:
                    trained[(molecule, model, str(seed))] = reached
                write_rows(rows, csv_path)
                write_steps(trained, steps_path)
                write_markdown(rows, command, args.protocol, trained, args.budget_minutes, md_path)
                print(
                    f"{molecule} {model} seed {seed}: mean MSE "
                    f"{np.mean([float(r['mse']) for r in new]):.4g} A^2 -> {csv_path}",
                    flush=True,
                )
    if rows:
        write_steps(trained, steps_path)
        write_markdown(rows, command, args.protocol, trained, args.budget_minutes, md_path)
    if failures:
        raise AsteroidError(f"{len(failures)} run(s) failed; the first: {failures[0]}")
    return 0
