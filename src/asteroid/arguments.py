"""The subcommands' argument parsing: one parser class and the value types they share, so that a bad option is
refused at parse time, in one line, with the allowed range. What one option alone cannot tell (two options that
exclude each other, a device that is not there) is checked after parsing, with a ConfigError naming the options."""

import argparse
from pathlib import Path

from asteroid.config import describe_parse_error
from asteroid.errors import ConfigError


class CommandParser(argparse.ArgumentParser):
    """argparse without abbreviations (`--budget` is not taken for `--budget-minutes`), whose errors are ConfigErrors:
    the command prints them as one line and exits 2, like every other error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):  # with the closest option it has, if any is close
            message = describe_parse_error(message, [], list(self._option_string_actions))
        raise ConfigError(message)


def _bounded(kind, allowed, wording: str):
    def parse(text: str):
        value = kind(text)
        if not allowed(value):
            raise argparse.ArgumentTypeError(f"must be {wording}, got {text}")
        return value

    return parse


def existing_file(what: str = "file"):
    """argparse type: the path of a file that is there ("x.yaml: config file not found" otherwise)."""

    def parse(text: str) -> str:
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"{text}: {what} not found")
        return text

    return parse


def positive(kind):
    """argparse type: a value of `kind` above 0."""
    return _bounded(kind, lambda value: value > 0, "positive")


def non_negative(kind):
    """argparse type: a value of `kind` of at least 0."""
    return _bounded(kind, lambda value: value >= 0, ">= 0")
