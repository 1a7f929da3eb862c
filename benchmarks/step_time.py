"""CPU time of one training step of each model on the same batches, and its ratio to EGNN's.

    python benchmarks/step_time.py [--experiment experiments/aspirin.yaml] [--models asteroid egnn ...]

A step is what `asteroid fit` does per batch: the module's training_step (augmentation where the model's config
asks for it, forward with teacher forcing, forecast and weighted auxiliary losses),
backward, AdamW step. Batches are real training windows of the experiment (batch size from its config, 32 by
default). One torch thread; each model runs `--warmup` untimed steps, then `--steps` timed ones, and the median of
the process's CPU time per step is reported (CPU time, not wall time, so that other jobs on a shared machine do not
count). The target of the model issue: ASTEROID at most 2x EGNN on aspirin.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from asteroid.lightning_cli import from_config

EXPERIMENTS = Path("experiments")


def step_seconds(experiment: Path, model: str, steps: int, warmup: int) -> float:
    """Median CPU seconds of one training step of `model` on the experiment's training batches."""
    cli = from_config(["--config", str(experiment), "--config", str(EXPERIMENTS / "models" / f"{model}.yaml")])
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    module.net.set_displacement_scale(datamodule.displacement_scale)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.hparams.sampling_ramp = 0.0  # no trainer to measure progress by: no scheduled sampling
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    module.trainer = None
    batches = iter(datamodule.train_dataloader())
    times = []
    for index in range(warmup + steps):
        batch = next(batches)
        start = time.process_time()
        loss = module.training_step(batch, index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index >= warmup:
            times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=EXPERIMENTS / "aspirin.yaml")
    parser.add_argument("--models", nargs="+", default=["egnn", "asteroid"], help="names in experiments/models/")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds = {model: step_seconds(args.experiment, model, args.steps, args.warmup) for model in args.models}
    reference = seconds.get("egnn")
    print(f"{args.experiment.stem}, one thread, CPU seconds per training step (median of {args.steps}):")
    for model, value in seconds.items():
        ratio = f"  {value / reference:.2f}x EGNN" if reference else ""
        print(f"  {model:12s} {value:.4f} s{ratio}")


if __name__ == "__main__":
    main()
