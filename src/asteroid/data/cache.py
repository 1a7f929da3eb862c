"""The coordinate cache: each trajectory stored once as float32 `.npy`, with a record that vouches for it."""

from __future__ import annotations

import zlib
from pathlib import Path


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


def cache_problem(coords_file: Path, meta: dict) -> str | None:
    """Why a coordinate cache cannot be trusted (missing, cut, changed since it was made), or None if it can."""
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
