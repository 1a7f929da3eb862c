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
import shlex
import sys
from pathlib import Path

import numpy as np

from asteroid.arguments import CommandParser, non_negative, positive
from asteroid.checkpoints import trained_steps
from asteroid.data.windows import PROTOCOLS
from asteroid.errors import AsteroidError
from asteroid.fileio import sole_writer, writable_output
from asteroid.models.baselines.extrapolation import PolynomialExtrapolation
from asteroid.runs import run_name
from asteroid.studies.accuracy_tables import (
    COLUMNS,
    ROLLOUT_COLUMNS,
    backfill,
    read_rows,
    write_markdown,
    write_rows,
    write_steps,
)
from asteroid.studies.comparison import (
    data_facts,
    experiment_files,
    fit_arguments,
    lengthened_sources,
    net_class,
    net_overrides,
    run_once,
)
from asteroid.studies.peer_rollout import estag_rollout_rows
from asteroid.training.test_table import read_model_rows


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
