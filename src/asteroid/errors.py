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


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of the Python API of the wrong type (also a TypeError, as Python's own would be)."""


class ArgumentValueError(ConfigError, ValueError):
    """An argument of the Python API of the right type and a value it cannot take (also a ValueError)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT during one of our own subcommands, raised where the program is so that every temporary file
    is removed on the way out (`fileio.atomic_output`); the command then exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
