"""The ASTEROID model (model.py) and its blocks: scalar-vector layers, spatial attention, temporal encoder and
decoders, the STI transformation."""

from asteroid.models.asteroid.model import Asteroid

__all__ = ["Asteroid"]
