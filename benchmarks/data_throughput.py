"""Windows per second delivered by TrajectoryDataModule's training loader (gather + collate, no model).

python benchmarks/data_throughput.py data/ethanol_xtb.npz [--batch-size 32] [--batches 300] [--workers 0]
"""

import argparse
import time

import torch

from asteroid.data import TrajectoryDataModule, TrajectorySource


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trajectory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--cache-dir", default="data/cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = TrajectoryDataModule(
        [TrajectorySource(args.trajectory)],
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache_dir=args.cache_dir,
    )
    dm.prepare_data()
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    windows, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        windows += len(batch["history"])
        if i + 1 == args.batches:
            break
    elapsed = time.perf_counter() - start
    n_train = len(dm.datasets["train"])
    print(
        f"{args.trajectory}: {n_train} training windows of {dm.history}+{dm.horizon} frames x "
        f"{batch['history'].shape[2]} atoms; setup {setup_s:.2f} s (split + displacement scale)"
    )
    print(
        f"{windows} windows in {elapsed:.2f} s = {windows / elapsed:.0f} windows/s "
        f"(batch {args.batch_size}, {args.workers} workers)"
    )


if __name__ == "__main__":
    main()
