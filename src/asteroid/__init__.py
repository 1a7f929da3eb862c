"""ASTEROID: Advanced Spatiotemporal TransformER fOr Inferring Dynamics.

`asteroid.load(checkpoint)` gives a trained model to forecast and roll out from Python (see asteroid.api.forecaster).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported when first asked for: `import asteroid` stays light (no torch) for the command's start-up
    if name in ("load", "Forecaster", "ForecastDynamics", "Frames"):
        from asteroid.api import forecaster

        return getattr(forecaster, name)
    raise AttributeError(f"module 'asteroid' has no attribute {name!r}")
