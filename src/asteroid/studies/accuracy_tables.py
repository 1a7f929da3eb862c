"""The accuracy tables of `asteroid compare`: per-step rows (CSV), the steps each run reached, and the markdown
table with the prose that says how it was made."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import numpy as np
import torch

from asteroid.checkpoints import trained_steps
from asteroid.data.windows import PROTOCOLS
from asteroid.fileio import atomic_output
from asteroid.runs import newest, run_name
from asteroid.training.test_table import read_model_rows

COLUMNS = ["molecule", "model", "seed", "step", "mse", "mae", "rmsd", "ade"]
STEPS_COLUMNS = ["molecule", "model", "seed", "steps"]  # optimizer steps each run reached within the budget
ROLLOUT_COLUMNS = ["molecule", "model", "seed", "round", "mse"]  # ESTAG's rollout metric (`peer_rollout`)


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


def spread(values: np.ndarray) -> str:
    """Mean, and ± the standard deviation over seeds when there are several."""
    return f"{values.mean():.4g}" + (f" ± {values.std():.2g}" if len(values) > 1 else "")


def markdown(
    rows: list[dict],
    command: str,
    protocol: str = "default",
    trained: dict | None = None,
    budget_minutes: float = 5.0,
    rollouts: list[dict] = (),
) -> str:
    """Mean +- std over seeds of the MSE per horizon step and averaged; the best mean per molecule in bold.

    trained: {(molecule, model, seed): optimizer steps}, shown as their mean over the seeds that have one.
    rollouts: ESTAG's rollout metric, rows of ROLLOUT_COLUMNS, shown per molecule when given."""
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
        lines += rollout_table([r for r in rollouts if r["molecule"] == molecule])
    return "\n".join(lines)


def rollout_cell(values: np.ndarray) -> str:
    """spread() of the seeds' MSE, or how many of them diverged (an infinite MSE) before that round."""
    diverged = int(np.isinf(values).sum())
    return spread(values) if not diverged else f"diverged ({diverged} of {len(values)} seeds)"


def rollout_table(rollouts: list[dict]) -> list[str]:
    """ESTAG's rollout metric per model, mean +- std over the seeds scored; no lines when there are none."""
    if not rollouts:
        return []
    rounds = sorted({int(r["round"]) for r in rollouts})
    table = {}  # model -> {round: [mse per seed]}
    for r in rollouts:
        table.setdefault(r["model"], {}).setdefault(int(r["round"]), []).append(float(r["mse"]))
    lines = [
        "ESTAG's rollout metric (GLAD-RUC/ESTAG rollout/md_rollout.py, `asteroid.studies.peer_rollout`): from the "
        "official pivot (np.random.seed(1), anywhere in the trajectory) each forecast fed back as history, the MSE "
        "(Angstrom^2) against the true frame at rounds "
        + " and ".join(map(str, rounds))
        + " (one round: 10 frames of the file). One trajectory per run, so a seed's figure is noisy; seeds: the "
        "runs whose folders were here. Beside the official rule (the forecast mean fed back), from the same start: "
        "a stochastic model's mean over 16 rollouts of its draws (`ensemble_rollout_mse`: each member fed back its "
        "own draws, rigid motion stripped, the thermostat on), and, with no model, the mean of the 10 history "
        "frames held.",
        "",
        "| model | seeds | " + " | ".join(f"round {n}" for n in rounds) + " |",
        "|---|---|" + "---|" * len(rounds),
    ]
    for model in sorted(table, key=lambda m: np.mean(table[m][rounds[-1]])):
        cells = [rollout_cell(np.array(table[model][n])) for n in rounds]
        lines.append(f"| {model} | {len(table[model][rounds[0]])} | " + " | ".join(cells) + " |")
    return lines + [""]


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
    rows: list[dict],
    command: str,
    protocol: str,
    trained: dict,
    budget_minutes: float,
    path: Path,
    rollouts: list[dict] = (),
) -> None:
    with atomic_output(path, "w") as handle:
        handle.write(markdown(rows, command, protocol, trained, budget_minutes, rollouts))


def backfill(rows: list[dict], trained: dict, protocol: str, equal_steps: bool, group: str = "compare") -> None:
    """Complete, from the run folders that are here, what older versions did not record: steps and ADE."""
    for key in {(r["molecule"], r["model"], r["seed"]) for r in rows}:
        name = run_name(protocol, *key, equal_steps, group)
        if key not in trained and (reached := trained_steps(name)) is not None:
            trained[key] = reached
        lacking = [r for r in rows if (r["molecule"], r["model"], r["seed"]) == key and not r.get("ade")]
        if lacking and (test_metrics := newest(name, "test_metrics.csv")) is not None:
            ade = {r["step"]: r["ade"] for r in read_model_rows(test_metrics)}
            for r in lacking:
                r["ade"] = ade.get(r["step"], "")
