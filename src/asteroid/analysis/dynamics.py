"""Motion checks that a frozen or noise-driven trajectory fails: step size, kinetic temperature and vibrational
spectrum, each from finite differences at the predicted frame spacing, for predicted and reference alike."""

from __future__ import annotations

import numpy as np
from ase.data import atomic_masses
from ase.units import _amu, _k

SEGMENT_FRAMES = 128  # frames per spectrum segment (Welch): 128 x 5 fs resolves 52 cm^-1
SPEED_OF_LIGHT_CM_PER_FS = 2.99792458e-5


def finite_velocities(R: np.ndarray) -> np.ndarray:
    """(..., F - 1, N, 3) frame-to-frame steps of R (..., F, N, 3), Angstrom per frame."""
    return np.diff(R, axis=-3)


def mean_step(R: np.ndarray) -> float:
    """Mean over atoms and steps of the distance an atom moves from one frame to the next, Angstrom."""
    return float(np.linalg.norm(finite_velocities(R), axis=-1).mean())


def kinetic_temperature(R: np.ndarray, z: np.ndarray, dt_fs: float) -> float:
    """Kelvin, from the finite-difference velocities of R (..., F, N, 3) frames dt_fs apart: the mean kinetic energy
    over 3N degrees of freedom. Finite differences over a few fs miss part of the fastest vibrations, so compare it
    only with a reference treated the same way (same spacing), never with the thermostat's temperature."""
    v = finite_velocities(R) * 1e-10 / (dt_fs * 1e-15)  # m/s
    mass = atomic_masses[z] * _amu  # kg
    kinetic = 0.5 * (mass[:, None] * v**2).sum((-1, -2))  # (..., F - 1) J
    return float(kinetic.mean() * 2 / (3 * len(z) * _k))


def vibrational_spectrum(R: np.ndarray, z: np.ndarray, dt_fs: float, segment: int = SEGMENT_FRAMES):
    """Wavenumbers (K,) cm^-1 and the vibrational density of states (K,), normalised to sum 1: the mass-weighted
    power spectrum of the finite-difference velocities (the Fourier transform of their autocorrelation), Hann-
    windowed segments of `segment` frames averaged (Welch). R (B, F, N, 3); segments never span two trajectories."""
    v = finite_velocities(np.asarray(R, np.float64))  # (B, F - 1, N, 3)
    length = min(segment, v.shape[1])
    if length < 4:
        raise ValueError(f"a spectrum needs at least 5 frames per trajectory, got {v.shape[1] + 1}")
    window = np.hanning(length)[:, None, None]
    weights = atomic_masses[z][:, None]  # (N, 1)
    power = np.zeros(length // 2 + 1)
    for trajectory in v:
        for start in range(0, len(trajectory) - length + 1, length // 2):  # half-overlapping segments
            chunk = trajectory[start : start + length]
            chunk = (chunk - chunk.mean(0)) * window
            power += (weights * np.abs(np.fft.rfft(chunk, axis=0)) ** 2).sum((1, 2))
    wavenumbers = np.fft.rfftfreq(length, d=dt_fs) / SPEED_OF_LIGHT_CM_PER_FS
    return wavenumbers, power / power.sum()


def spectrum_overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Overlap of two normalised spectra, sum of the smaller of the two in every bin: 1 identical, 0 disjoint."""
    return float(np.minimum(p, q).sum())


def autocorrelation_time(angles_deg: np.ndarray, dt_fs: float) -> float | None:
    """Femtoseconds until the autocorrelation of the unit vector (cos, sin) of a torsion, averaged over
    trajectories, first falls below 1/e; angles (B, F). None when it never does within the frames."""
    unit = np.exp(1j * np.radians(angles_deg))  # (B, F)
    unit = unit - unit.mean(axis=1, keepdims=True)
    F = unit.shape[1]
    spectrum = np.fft.fft(unit, n=2 * F, axis=1)
    acf = np.fft.ifft(np.abs(spectrum) ** 2, axis=1)[:, :F].real.sum(0) / np.arange(F, 0, -1)
    if acf[0] <= 0:
        return None
    below = np.flatnonzero(acf / acf[0] < 1 / np.e)
    return None if not len(below) else float(below[0] * dt_fs)
