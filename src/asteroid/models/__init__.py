"""Forecasting networks: the ASTEROID model, the baselines and the ForecastModel contract they share."""

from asteroid.models.asteroid import Asteroid
from asteroid.models.base import ForecastModel
from asteroid.models.baselines.egnn import EGNN
from asteroid.models.baselines.egno import EGNO
from asteroid.models.baselines.estag import ESTAG
from asteroid.models.baselines.extrapolation import LastFrame, LinearExtrapolation, QuadraticExtrapolation
from asteroid.models.baselines.sequence import LSTMForecaster, TransformerForecaster
from asteroid.models.neighbors import radius_neighbors

__all__ = [
    "Asteroid",
    "EGNN",
    "EGNO",
    "ESTAG",
    "ForecastModel",
    "LSTMForecaster",
    "LastFrame",
    "LinearExtrapolation",
    "QuadraticExtrapolation",
    "TransformerForecaster",
    "radius_neighbors",
]
