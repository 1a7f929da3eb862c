"""Forecasting networks: the ASTEROID model and the ForecastModel contract shared with the baselines."""

from asteroid.models.asteroid import Asteroid
from asteroid.models.base import ForecastModel
from asteroid.models.neighbors import radius_neighbors

__all__ = ["Asteroid", "ForecastModel", "radius_neighbors"]
