"""Checks of the Python API's arguments (`asteroid.load`, `Forecaster`, `ForecastDynamics`): each refuses in one line
naming the argument and what it must be, and accepts nothing the command line refuses."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from asteroid.errors import ArgumentTypeError, ArgumentValueError, ConfigError

# Coordinates beyond this (Angstrom) are no molecule's: in float32 their differences lose every digit a forecast needs.
LARGEST_COORDINATE = 1e5


def integer(name: str, value, minimum: int | None = None) -> int:
    """`value` as an int (numpy integers too; never a bool or a float), at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ArgumentValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def number(name: str, value, minimum: float | None = None) -> float:
    """`value` as a finite float, at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ArgumentValueError(f"{name} must be a finite number{bound}, got {value}")
    return float(value)


def flag(name: str, value, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if optional else "True or False"
        raise ArgumentTypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    return bool(value)


def device(value) -> torch.device:
    """A torch device that is there: 'cuda' on a machine without one is refused as the CLI refuses it."""
    if not isinstance(value, (str, torch.device)):
        raise ArgumentTypeError(f"device must be a string such as 'cpu' or a torch.device, got {value!r}")
    try:
        chosen = torch.device(value)
    except RuntimeError:
        raise ArgumentValueError(f"device {value!r} is not a torch device; use 'cpu' or 'cuda'") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {value!r}: torch sees no CUDA device here; use 'cpu'")
    if chosen.type not in ("cpu", "cuda"):
        raise ArgumentValueError(f"device {value!r}: only 'cpu' and 'cuda' are supported")
    return chosen


def frames_of(name: str, history, z=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, N, 3) float64 coordinates and atomic numbers (from the Atoms, else `z` as given) of `history`: an array
    or a list of ase.Atoms frames, all of one molecule in one atom order."""
    if isinstance(history, (str, Path)):
        raise ArgumentTypeError(
            f"{name} must be frames (T, N, 3) Angstrom or ase.Atoms, not a file name; read the file first, e.g. "
            "ase.io.read(path, index=':')"
        )
    if isinstance(history, Atoms):
        raise ArgumentTypeError(
            f"{name} must be several frames (a list of ase.Atoms or a (T, N, 3) array), got one Atoms"
        )
    if isinstance(history, (list, tuple)) and history and all(isinstance(frame, Atoms) for frame in history):
        numbers_first = history[0].numbers
        for i, frame in enumerate(history):
            if len(frame) != len(numbers_first):
                raise ArgumentValueError(
                    f"{name}: frame {i} has {len(frame)} atoms, frame 0 {len(numbers_first)}; give frames of one "
                    "molecule"
                )
            if not np.array_equal(frame.numbers, numbers_first):
                raise ArgumentValueError(
                    f"{name}: frame {i} holds other elements (or another atom order) than frame 0; give frames of "
                    "one molecule"
                )
        if z is not None and not np.array_equal(np.asarray(z), numbers_first):
            raise ArgumentValueError(f"z = {list(z)} differs from the atomic numbers of the {name} Atoms")
        history, z = [frame.positions for frame in history], numbers_first
    elif isinstance(history, (list, tuple)) and any(isinstance(frame, Atoms) for frame in history):
        raise ArgumentTypeError(f"{name} mixes ase.Atoms with other things; give Atoms frames or one array")
    try:
        frames = np.asarray(history, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(
            f"{name} must be frames (T, N, 3) Angstrom (an array or a list of ase.Atoms), got {type(history).__name__}"
        ) from None
    if frames.ndim != 3 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ArgumentValueError(f"{name} must be frames (T, N, 3) Angstrom, got shape {frames.shape}")
    if not np.isfinite(frames).all():
        raise ArgumentValueError(f"{name} holds NaN or infinity")
    largest = np.abs(frames).max()
    if largest > LARGEST_COORDINATE:
        raise ArgumentValueError(
            f"{name} holds a coordinate of {largest:.3g} Angstrom; a molecule's coordinates are well under "
            f"{LARGEST_COORDINATE:g} (are they in Angstrom?)"
        )
    return frames, None if z is None else atomic_numbers(z)


def atomic_numbers(z) -> np.ndarray:
    try:
        array = np.asarray(z)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"z must be atomic numbers (a sequence of integers), got {z!r}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or (array < 1).any() or (array > 118).any():
        raise ArgumentValueError(f"z must be atomic numbers 1-118, one per atom, got {array.tolist()}")
    return array
