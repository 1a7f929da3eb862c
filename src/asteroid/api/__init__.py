"""The Python API: `asteroid.load` gives a `Forecaster` of a checkpoint; `ForecastDynamics` drives an ase.Atoms with
it; `checks` refuses bad arguments in one line; `threads` chooses torch's threads for the machine."""
