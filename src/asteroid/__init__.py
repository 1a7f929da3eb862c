"""ASTEROID: Advanced Spatiotemporal TransformER fOr Inferring Dynamics."""

__version__ = "0.1.0"
