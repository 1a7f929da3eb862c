"""Errors meant for the user: the CLI prints them as one line and exits non-zero."""


class AsteroidError(Exception):
    """A problem the user can fix (bad file, bad option); never a bug of ours."""


class DataError(AsteroidError):
    """A trajectory file that is missing, unreadable or not usable for forecasting."""


class MissingTimestepError(DataError):
    """A trajectory file that does not state the time between its frames (the caller may supply one)."""


class ConfigError(AsteroidError):
    """An option or combination of options that cannot work."""


class DivergedError(AsteroidError):
    """Training, weights or forecasts that have become non-finite (NaN or infinite)."""
