"""Validation MSE of pretrained checkpoints over every molecule they were trained on: every 8th validation window of
each molecule's own chronological split, forecast with `generate` (bond lengths projected, as in `asteroid test`).
This is how pretraining runs are compared without touching the held-out molecules (docs/results/transfer.md).
Checkpoints trained on different molecules are compared on the molecules they share (each molecule's windows are
its own split's, whatever else a run was trained on), and each is also scored on all of its own.

    python benchmarks/pretraining_validation.py CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from asteroid.api.forecaster import load_with_data
from asteroid.data.dataset import collate_windows

EVERY, BATCH = 8, 64


def validation_errors(ckpt_path: str) -> dict[str, list[float]]:
    """Per molecule (its data file's name): [summed squared error (A^2), error components, windows] over every
    EVERY-th window of the concatenated validation split."""
    forecaster, datamodule = load_with_data(ckpt_path)
    net = forecaster.net
    datamodule.prepare_data()
    datamodule.setup("fit")
    windows = datamodule.datasets["val"]
    names = [Path(source.path).stem for source in datamodule.sources]
    picks = range(0, len(windows), EVERY)
    errors = {name: [0.0, 0.0, 0] for name in names}
    with torch.no_grad():
        for start in range(0, len(picks), BATCH):
            chosen = picks[start : start + BATCH]
            batch = collate_windows([windows[i] for i in chosen])
            forecast = net.generate(batch["history"], batch["z"], batch["mask"])  # (B, P, N, 3)
            error = (forecast - batch["target"]).square().sum(-1) * batch["mask"][:, None]  # (B, P, N), padding 0
            for row, i in enumerate(chosen):
                totals = errors[names[windows.index[i][0]]]
                totals[0] += float(error[row].sum())
                totals[1] += 3 * float(batch["mask"][row].sum()) * forecast.shape[1]
                totals[2] += 1
    return errors


def pooled(errors: dict[str, list[float]], molecules=None) -> tuple[float, int]:
    """Mean squared error (A^2, over atoms, components and horizon steps) over `molecules` (all when None), and the
    number of windows."""
    chosen = [errors[name] for name in (errors if molecules is None else molecules)]
    return sum(e[0] for e in chosen) / sum(e[1] for e in chosen), sum(e[2] for e in chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    errors = {ckpt_path: validation_errors(ckpt_path) for ckpt_path in args.checkpoints}
    shared = [name for name in next(iter(errors.values())) if all(name in e for e in errors.values())]
    for ckpt_path, own in errors.items():
        mse, windows = pooled(own)
        line = f"{ckpt_path}: validation MSE {mse:.4g} A^2 over {windows} windows of {len(own)} molecules"
        if len(shared) < len(own):
            mse, windows = pooled(own, shared)
            line += f"; {mse:.4g} A^2 over the {windows} windows of the {len(shared)} molecules all share"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
