"""The coordinate cache: each trajectory stored once as float32 `.npy`, with a record that vouches for it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from asteroid.data.trajectory import Trajectory
from asteroid.fileio import atomic_output


def box_file(coords_file: Path) -> Path:
    """Where the cache keeps a periodic trajectory's (T, 3, 3) cells, beside its coordinates."""
    return coords_file.with_suffix(".box.npy")


def cache_fingerprint(coords_file: Path) -> dict:
    """Size and CRC-32 of a coordinate cache (and of its cells, if periodic): what its metadata records."""
    fingerprint = {}
    for key, path in (("coordinates", coords_file), ("cells", box_file(coords_file))):
        if path.exists():
            crc = 0
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            fingerprint[key] = {"bytes": path.stat().st_size, "crc32": crc}
    return fingerprint


def read_record(meta_file: Path) -> dict | None:
    """A cache's record, or None where it is not a whole JSON object (cut by a crash, or edited)."""
    try:
        record = json.loads(meta_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def cache_problem(coords_file: Path, meta: dict | None) -> str | None:
    """Why a coordinate cache cannot be trusted (missing, cut, changed since it was made), or None if it can."""
    if meta is None:
        return "its record is unreadable"
    if not coords_file.exists():
        return "missing"
    if "coordinates" not in meta:
        return "made by an older version without a checksum"
    found = cache_fingerprint(coords_file)
    for key, recorded in ((k, meta[k]) for k in ("coordinates", "cells") if k in meta):
        if key not in found:
            return f"its {key} file is missing"
        if found[key]["bytes"] != recorded["bytes"]:
            return f"its {key} file has {found[key]['bytes']} bytes where {recorded['bytes']} were written (cut?)"
        if found[key]["crc32"] != recorded["crc32"]:
            return f"its {key} file does not match the checksum written with it (changed or corrupted)"
    return None


def write_cache(traj: Trajectory, coords_file: Path, meta_file: Path, periodic: bool, source: Path) -> None:
    """A trajectory's coordinates as float32 `.npy` (and its cells, if periodic), then the record that vouches for
    them; on any failure (a full disk, say) nothing is left, as a cache without its record would fill the disk still."""
    try:
        if periodic:
            with atomic_output(box_file(coords_file)) as handle:
                np.save(handle, traj.box)
        with atomic_output(coords_file) as handle:
            np.save(handle, np.ascontiguousarray(traj.R, dtype=np.float32))
        with atomic_output(meta_file, "w") as handle:  # last: its presence says the cache is complete
            record = dict(z=traj.z.tolist(), dt_fs=traj.dt_fs, name=traj.name, source=str(source), periodic=periodic)
            json.dump({**record, **cache_fingerprint(coords_file)}, handle)
    except BaseException:
        for part in (coords_file, box_file(coords_file), meta_file):
            part.unlink(missing_ok=True)
        raise
