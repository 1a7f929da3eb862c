"""Trajectories from every source, and the windows the models learn from."""

from asteroid.data.md17 import resolve_dataset
from asteroid.data.readers import load_trajectory
from asteroid.data.sources import TrajectorySource
from asteroid.data.time_order import TimeOrderWarning
from asteroid.data.trajectory import Trajectory


def __getattr__(name: str):
    # the data module loads Lightning (seconds): imported when first asked for, so that reading files stays quick
    if name == "TrajectoryDataModule":
        from asteroid.data.datamodule import TrajectoryDataModule

        return TrajectoryDataModule
    raise AttributeError(f"module 'asteroid.data' has no attribute {name!r}")


__all__ = [
    "Trajectory",
    "TrajectoryDataModule",
    "TrajectorySource",
    "TimeOrderWarning",
    "load_trajectory",
    "resolve_dataset",
]
