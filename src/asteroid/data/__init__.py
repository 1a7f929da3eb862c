"""Trajectories from every source, and the windows the models learn from."""

from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.md17 import resolve_dataset
from asteroid.data.readers import load_trajectory
from asteroid.data.sources import TrajectorySource
from asteroid.data.time_order import TimeOrderWarning
from asteroid.data.trajectory import Trajectory

__all__ = [
    "Trajectory",
    "TrajectoryDataModule",
    "TrajectorySource",
    "TimeOrderWarning",
    "load_trajectory",
    "resolve_dataset",
]
