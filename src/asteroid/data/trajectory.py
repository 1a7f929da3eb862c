"""The one in-memory form of every trajectory, whatever file it came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from asteroid.errors import DataError

# Coordinates are kept as float32; beyond 8192 Angstrom its spacing exceeds 1e-3 Angstrom, a sizeable share of a
# 5 fs step (0.1 A), so a trajectory offset that far is refused rather than silently rounded.
FLOAT32_REACH = 8192.0


@dataclass
class Trajectory:
    """Frames of atomic coordinates.

    R: (T, N, 3) float32, Angstrom (may be a read-only np.memmap).
    z: (N,) int64 atomic numbers.
    dt_fs: time between consecutive frames, femtoseconds.
    E: (T,) energies and F: (T, N, 3) forces, in the file's units, when the file has them.
    box: (T, 3, 3) float32 periodic cell vectors as rows, Angstrom, or None for open boundaries (a (3, 3) cell
        is taken for every frame).
    """

    R: np.ndarray
    z: np.ndarray
    dt_fs: float
    name: str
    source: str
    E: np.ndarray | None = None
    F: np.ndarray | None = None
    box: np.ndarray | None = None

    def __post_init__(self):
        def fail(problem: str):
            raise DataError(f"{self.source}: {problem}")

        R = np.asarray(self.R) if not isinstance(self.R, np.memmap) else self.R
        if R.ndim != 3 or R.shape[-1] != 3:
            fail(f"coordinates must have shape (frames, atoms, 3), got {tuple(R.shape)}")
        if R.shape[0] == 0:
            fail("the trajectory has no frames")
        if R.shape[1] == 0:
            fail("the trajectory has no atoms")
        if not (np.issubdtype(R.dtype, np.floating) or np.issubdtype(R.dtype, np.integer)):
            fail(f"coordinates must be real numbers, got dtype {R.dtype}")
        if R.dtype != np.float32:
            with np.errstate(over="ignore"):  # values beyond float32's range become inf, refused just below
                R = R.astype(np.float32)
        bad = ~np.isfinite(R).all(axis=(1, 2))
        if bad.any():
            fail(f"{int(bad.sum())} frame(s) contain NaN or inf coordinates (first: frame {int(np.argmax(bad))})")
        reach = float(np.abs(R).max())
        if reach >= FLOAT32_REACH:
            fail(
                f"coordinates reach {reach:.3g} Angstrom, where float32 (in which they are kept) rounds to "
                f"{np.spacing(np.float32(reach)):.2g} Angstrom; centre the trajectory (subtract its mean position)"
            )
        z = np.asarray(self.z)
        if z.ndim != 1 or len(z) != R.shape[1]:
            fail(f"atomic numbers z have shape {tuple(z.shape)} but the coordinates have {R.shape[1]} atoms")
        if not np.issubdtype(z.dtype, np.integer):
            if not np.issubdtype(z.dtype, np.number) or not np.all(np.mod(z, 1) == 0):
                fail(f"atomic numbers z must be integers, got dtype {z.dtype}")
        z = z.astype(np.int64)
        if z.min() < 1 or z.max() > 118:
            fail(f"atomic numbers must lie in 1..118, got {z.min()}..{z.max()}")
        if not (np.isfinite(self.dt_fs) and self.dt_fs > 0):
            fail(f"the frame spacing dt_fs must be a positive number of femtoseconds, got {self.dt_fs}")
        for key, arr, shape in (("E", self.E, (R.shape[0],)), ("F", self.F, R.shape)):
            if arr is not None and not np.issubdtype(np.asarray(arr).dtype, np.number):
                fail(f"{key} must be numbers, got dtype {np.asarray(arr).dtype}")
            if arr is not None and np.asarray(arr).reshape(-1).size != int(np.prod(shape)):
                fail(
                    f"{key} has shape {np.asarray(arr).shape}, which does not match {R.shape[0]} frames "
                    f"of {R.shape[1]} atoms"
                )
        self.R, self.z, self.dt_fs = R, z, float(self.dt_fs)
        if self.box is not None:
            self.box = self._checked_box(np.asarray(self.box), fail)

    def _checked_box(self, box: np.ndarray, fail) -> np.ndarray:
        if not np.issubdtype(box.dtype, np.number):
            fail(f"the periodic box must be numbers, got dtype {box.dtype}")
        if box.shape == (3, 3):
            box = np.broadcast_to(box, (self.n_frames, 3, 3))
        if box.shape != (self.n_frames, 3, 3):
            fail(f"the periodic box has shape {box.shape}; expected (3, 3) or ({self.n_frames}, 3, 3) cell vectors")
        box = box.astype(np.float64)
        finite = np.isfinite(box).all(axis=(1, 2))
        if not finite.all():
            fail(f"the periodic box of frame {int(np.argmin(finite))} contains NaN or inf")
        flat = np.abs(np.linalg.det(box)) < 1e-6
        if flat.any():
            first = int(np.argmax(flat))
            fail(f"the periodic box of frame {first} is flat (zero volume): {box[first].tolist()}")
        return box.astype(np.float32)

    @property
    def n_frames(self) -> int:
        return self.R.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.R.shape[1]

    def select_atoms(self, index: np.ndarray) -> "Trajectory":
        """The same trajectory restricted to the atoms in `index`."""
        if len(index) == 0:
            raise DataError(f"{self.source}: the atom selection matches no atom")
        return Trajectory(
            R=np.ascontiguousarray(self.R[:, index]),
            z=self.z[index],
            dt_fs=self.dt_fs,
            name=self.name,
            source=self.source,
            E=self.E,
            F=None if self.F is None else np.asarray(self.F)[:, index],
            box=self.box,
        )

    def unwrapped(self) -> "Trajectory":
        """The same trajectory with every atom followed across the periodic boundaries, continuous in time.

        Files often wrap atoms back into the cell, so an atom leaving through one face jumps to the other: a
        forecaster would see a jump of a whole cell. Between consecutive frames each atom is moved by the nearest
        image of its displacement instead, which is right while atoms move less than half a cell per frame (MD
        frames move them by a fraction of an Angstrom). Already unwrapped coordinates come back unchanged.
        """
        if self.box is None or self.n_frames < 2:
            return self
        R = np.asarray(self.R, dtype=np.float64)
        cells = self.box[1:].astype(np.float64)  # (T-1, 3, 3) each step in the cell of the frame it reaches
        step = np.diff(R, axis=0)  # (T-1, N, 3)
        fractional = np.einsum("tnk,tkl->tnl", step, np.linalg.inv(cells))
        step -= np.einsum("tnk,tkl->tnl", np.round(fractional), cells)
        R[1:] = R[0] + np.cumsum(step, axis=0)
        return dataclasses.replace(self, R=R.astype(np.float32))
