"""Validation MSE of pretrained checkpoints over every molecule they were trained on: every 8th validation window of
each molecule's own chronological split, forecast with `generate` (bond lengths projected, as in `asteroid test`).
This is how pretraining runs are compared without touching the held-out molecules (docs/results/transfer.md).

    python benchmarks/pretraining_validation.py CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
import sys

import torch

from asteroid.api.forecaster import load_with_data
from asteroid.data.dataset import collate_windows

EVERY, BATCH = 8, 64


def validation_mse(ckpt_path: str) -> tuple[float, int]:
    """Mean squared error (A^2, over atoms, components and horizon steps) and the number of windows."""
    forecaster, datamodule = load_with_data(ckpt_path)
    net = forecaster.net
    datamodule.prepare_data()
    datamodule.setup("fit")
    windows = datamodule.datasets["val"]
    picks = range(0, len(windows), EVERY)
    squared = components = 0.0
    with torch.no_grad():
        for start in range(0, len(picks), BATCH):
            batch = collate_windows([windows[i] for i in picks[start : start + BATCH]])
            forecast = net.generate(batch["history"], batch["z"], batch["mask"])  # (B, P, N, 3)
            error = (forecast - batch["target"]).square().sum(-1) * batch["mask"][:, None]  # (B, P, N), padding 0
            squared += float(error.sum())
            components += 3 * float(batch["mask"].sum()) * forecast.shape[1]
    return squared / components, len(picks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for ckpt_path in args.checkpoints:
        mse, windows = validation_mse(ckpt_path)
        print(f"{ckpt_path}: validation MSE {mse:.4g} A^2 over {windows} windows", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
