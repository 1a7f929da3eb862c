"""Forecasting networks: the ASTEROID model, the baselines and the ForecastModel contract they share."""

from asteroid.models.asteroid import Asteroid
from asteroid.models.base import ForecastModel
from asteroid.models.egnn import EGNN
from asteroid.models.egno import EGNO
from asteroid.models.estag import ESTAG
from asteroid.models.extrapolation import LastFrame, LinearExtrapolation, QuadraticExtrapolation
from asteroid.models.neighbors import radius_neighbors
from asteroid.models.sequence import LSTMForecaster, TransformerForecaster

__all__ = ["Asteroid", "EGNN", "EGNO", "ESTAG", "ForecastModel", "LSTMForecaster", "LastFrame", "LinearExtrapolation",
           "QuadraticExtrapolation", "TransformerForecaster", "radius_neighbors"]
