"""Reliability sweep: bad files, bad configs and killed runs end in one clear line, never a traceback or a hang.

The cases are the tables below. Each bad input goes through the `asteroid` command in a forked child (a crash
or a hang cannot take the session with it); the fault cases kill real processes. At the end of a full run
(`make test`) docs/reliability.md is written from what every case did.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import asteroid as asteroid_api
from asteroid.cli import main as asteroid
from asteroid.data.readers import load_trajectory
from asteroid.errors import DataError
from asteroid.simulation.md import simulate
from asteroid.simulation.state import checkpoint_path

from helpers import harmonic_frames, md_topology, tiny_args, write_toy_trajectory
from helpers.sweep import Report, isolated, time_limit

pytestmark = pytest.mark.filterwarnings("ignore:.*netCDF4")  # mdtraj writing .nc through scipy: slower, not wrong

TESTS = Path(__file__).resolve().parents[1]  # tests/: helpers importable in the processes it starts
DOC = TESTS.parent / "docs" / "reliability.md"
Z = np.array([8, 6, 1, 1, 1])  # O C H H H: the atoms of helpers.md_topology
R = harmonic_frames()  # (60, 5, 3) Angstrom
NAN_R = np.where(np.arange(60)[:, None, None] == 7, np.nan, R)  # frame 7 is NaN
INF_R = np.where(np.arange(60)[:, None, None] == 7, np.inf, R)


# ---- building bad files from good ones ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One good file per format (60 frames of O C H H H, 0.5 fs apart), and .pdb topologies of 5 and 3 atoms."""
    import mdtraj as md

    folder = tmp_path_factory.mktemp("originals")
    traj = md.Trajectory(R / 10.0, md_topology(), time=np.arange(60) * 0.0005)  # nm, ps
    for suffix in ("dcd", "xtc", "trr", "nc", "h5", "pdb"):
        traj.save(str(folder / f"good.{suffix}"))
    traj[0].save_pdb(str(folder / "top.pdb"))
    traj.atom_slice([0, 1, 2])[0].save_pdb(str(folder / "three.pdb"))
    np.savez(folder / "good.npz", R=R, z=Z, dt_fs=0.5)
    for suffix in ("xyz", "extxyz", "traj"):
        ase_write(folder / f"good.{suffix}", R, Z)
    return folder


def ase_write(path, R, z, split_at=None):
    """Frames written by ASE; from frame `split_at` on, the last atom is left out."""
    import ase.io
    from ase import Atoms

    ase.io.write(
        path,
        [
            Atoms(
                numbers=z if split_at is None or t < split_at else z[:-1],
                positions=r if split_at is None or t < split_at else r[:-1],
            )
            for t, r in enumerate(R)
        ],
    )


def cut(name: str, keep: Callable[[int], int]):
    """The good file, its bytes cut to keep(size)."""

    def make(src, tmp):
        data = (src / name).read_bytes()
        (tmp / f"cut-{name}").write_bytes(data[: keep(len(data))])
        return tmp / f"cut-{name}"

    return make


def npz(**arrays):
    """The good npz with arrays replaced, added or (None) removed."""

    def make(src, tmp):
        contents = {key: value for key, value in {"R": R, "z": Z, "dt_fs": 0.5, **arrays}.items() if value is not None}
        np.savez(tmp / "bad.npz", **contents)
        return tmp / "bad.npz"

    return make


def text(name: str, content: str):
    def make(src, tmp):
        (tmp / name).write_text(content)
        return tmp / name

    return make


def edited(name: str, edit: Callable[[str], str]):
    """The good text file (.pdb, .xyz) after `edit`."""

    def make(src, tmp):
        (tmp / f"bad-{name}").write_text(edit((src / name).read_text()))
        return tmp / f"bad-{name}"

    return make


def mdtraj_file(suffix: str, coordinates: np.ndarray):
    def make(src, tmp):
        import mdtraj as md

        path = tmp / f"bad.{suffix}"
        md.Trajectory(coordinates / 10.0, md_topology(), time=np.arange(len(coordinates)) * 0.0005).save(str(path))
        return path

    return make


def ase_file(suffix: str, coordinates: np.ndarray, split_at=None):
    def make(src, tmp):
        ase_write(tmp / f"bad.{suffix}", coordinates, Z, split_at)
        return tmp / f"bad.{suffix}"

    return make


def empty_traj(src, tmp):
    from ase.io.trajectory import Trajectory

    Trajectory(str(tmp / "bad.traj"), "w").close()  # the header only
    return tmp / "bad.traj"


def directory(name: str):
    def make(src, tmp):
        (tmp / name).mkdir()
        return tmp / name

    return make


def nothing(src, tmp):
    return None


def binary(name: str, content: bytes):
    def make(src, tmp):
        (tmp / name).write_bytes(content)
        return tmp / name

    return make


def two_molecules(src, tmp):
    """A data.sources list (JSON) of the toy ethanol and a longer O C H H H file: two molecules."""
    write_toy_trajectory(tmp / "ethanol.npz")
    np.savez(tmp / "other.npz", R=harmonic_frames(300), z=Z, dt_fs=0.5)
    return json.dumps([{"path": str(tmp / "other.npz")}, {"path": str(tmp / "ethanol.npz")}])


def short_trajectory(src, tmp):
    write_toy_trajectory(tmp / "short.npz", n_frames=12)
    return tmp / "short.npz"


def without_atom_line(pdb: str, model: int) -> str:
    """A pdb whose `model`-th MODEL (1-based) lacks its first ATOM record."""
    blocks = pdb.split("MODEL ")
    lines = blocks[model].splitlines(keepends=True)
    first_atom = next(i for i, line in enumerate(lines) if line.startswith("ATOM"))
    blocks[model] = "".join(lines[:first_atom] + lines[first_atom + 1 :])
    return "MODEL ".join(blocks)


def replace_coordinate(pdb: str, value: str) -> str:
    """The x coordinate (columns 31-38) of the first ATOM record set to `value`."""
    start = pdb.index("\nATOM") + 1
    return pdb[: start + 30] + f"{value:>8}" + pdb[start + 38 :]


def last_model_cut(pdb: str) -> str:
    return pdb[: pdb.rindex("ENDMDL")]


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it and the `asteroid` command it is given to."""

    id: str
    what: str  # what is wrong, as the report says it
    make: Callable[[Path, Path], Path | None]  # (folder of good files, scratch folder) -> the bad file
    argv: tuple[str, ...]  # {bad}, {src} (good files), {tmp}; "{tiny}" stands for a seconds-long fit's options
    expect: str  # regex the message after "asteroid: error: " must match from its start

    def command(self, src: Path, tmp: Path, bad: Path | None) -> list[str]:
        argv = []
        for arg in self.argv:
            if arg == "{tiny}":
                argv += tiny_args(tmp, name="bad") + ["--trainer.max_epochs", "1", "--test_after_fit", "false"]
            else:
                argv.append(arg.replace("{bad}", str(bad)).replace("{src}", str(src)).replace("{tmp}", str(tmp)))
        return argv


INSPECT = ("inspect", "{bad}")
TIMELESS = INSPECT + ("--dt-fs", "0.5")
WITH_TOP = TIMELESS + ("--topology", "{src}/top.pdb")
WITH_THREE = TIMELESS + ("--topology", "{src}/three.pdb")


def xyz(x=lambda t: t, comment=lambda t: "", count=2, symbol="O") -> str:
    """Ten frames of O-H as XYZ text: coordinate x(t) and comment(t) of frame t, the atom-count line, a symbol."""
    return "".join(f"{count}\n{comment(t)}\n{symbol} 0 0 {x(t)}\nH 0 0.96 0\n" for t in range(10))


BAD_FILES = [
    # npz
    Case(
        "npz-truncated",
        "npz cut to 60% of its bytes",
        cut("good.npz", lambda n: n * 6 // 10),
        INSPECT,
        r"cut-good\.npz: cannot read the npz file",
    ),
    Case(
        "npz-not-zip",
        "npz that is not a zip archive",
        text("bad.npz", "R, z\n1, 2\n"),
        INSPECT,
        r"bad\.npz: not an npz file \(an npz is a zip archive of \.npy arrays\)",
    ),
    Case(
        "npz-R-complex",
        "R of complex numbers",
        npz(R=R.astype(np.complex64)),
        INSPECT,
        r"bad\.npz: coordinates must be real numbers, got dtype complex64",
    ),
    Case(
        "npz-R-text",
        "R of strings",
        npz(R=R.astype(str)),
        INSPECT,
        r"bad\.npz: coordinates must be real numbers, got dtype <U",
    ),
    Case(
        "npz-R-objects",
        "R of Python objects (pickled)",
        npz(R=np.array([{"x": 1}], dtype=object)),
        INSPECT,
        r"bad\.npz: cannot read the npz file \(Object arrays cannot be loaded",
    ),
    Case(
        "npz-z-float",
        "z of non-integer numbers",
        npz(z=Z + 0.5),
        INSPECT,
        r"bad\.npz: atomic numbers z must be integers, got dtype float64",
    ),
    Case("npz-z-range", "z outside 1..118", npz(z=Z * 0), INSPECT, r"bad\.npz: atomic numbers must lie in 1\.\.118"),
    Case(
        "npz-dt-text", "dt_fs a string", npz(dt_fs="half"), INSPECT, r"bad\.npz: dt_fs must be one number, got 'half'"
    ),
    Case("npz-dt-vector", "dt_fs an array", npz(dt_fs=[0.5, 0.5]), INSPECT, r"bad\.npz: dt_fs must be one number"),
    Case(
        "npz-nan",
        "NaN in frame 7",
        npz(R=NAN_R),
        INSPECT,
        r"bad\.npz: 1 frame\(s\) contain NaN or inf coordinates \(first: frame 7\)",
    ),
    Case("npz-inf", "inf in frame 7", npz(R=INF_R), INSPECT, r"bad\.npz: 1 frame\(s\) contain NaN or inf"),
    Case(
        "npz-z-mismatch",
        "z has 4 atoms, R has 5",
        npz(z=Z[:4]),
        INSPECT,
        r"bad\.npz: atomic numbers z have shape \(4,\) but the coordinates have 5 atoms",
    ),
    Case(
        "npz-E-mismatch",
        "E has 3 values for 60 frames",
        npz(E=np.zeros(3)),
        INSPECT,
        r"bad\.npz: E has shape \(3,\), which does not match 60 frames",
    ),
    Case(
        "npz-box-nan",
        "a periodic box of NaN",
        npz(box=np.full((3, 3), np.nan)),
        INSPECT,
        r"bad\.npz: the periodic box of frame 0 contains NaN or inf",
    ),
    Case(
        "npz-box-shape",
        "a periodic box of 3 numbers",
        npz(box=np.ones(3)),
        INSPECT,
        r"bad\.npz: the periodic box has shape \(3,\); expected \(3, 3\) or \(60, 3, 3\)",
    ),
    Case(
        "npz-box-flat",
        "a flat periodic box",
        npz(box=np.diag([9.0, 9.0, 0.0])),
        INSPECT,
        r"bad\.npz: the periodic box of frame 0 is flat",
    ),
    Case("npz-no-frames", "R with 0 frames", npz(R=R[:0]), INSPECT, r"bad\.npz: the trajectory has no frames"),
    Case("npz-no-atoms", "R with 0 atoms", npz(R=R[:, :0], z=Z[:0]), INSPECT, r"bad\.npz: the trajectory has no atoms"),
    Case("npz-no-R", "no R key", npz(R=None, positions=R), INSPECT, r"bad\.npz: missing key\(s\) R"),
    Case(
        "npz-rmd17",
        "a revised MD17 file (random frames)",
        npz(R=None, z=None, coords=R, nuclear_charges=Z),
        INSPECT,
        r"bad\.npz: this is a revised MD17 \(rMD17\)",
    ),
    Case(
        "npz-directory",
        "a directory named like an npz",
        directory("run.npz"),
        INSPECT,
        r"run\.npz: is a directory, not a trajectory file",
    ),
    Case("npz-missing", "no such file", nothing, ("inspect", "{tmp}/nowhere.npz"), r"nowhere\.npz: no such file"),
    Case(
        "unknown-suffix",
        "a .csv file",
        text("run.csv", "1,2,3\n"),
        INSPECT,
        r"run\.csv: unknown trajectory suffix '\.csv'",
    ),
    # XYZ
    Case(
        "xyz-truncated",
        "xyz cut within a frame",
        cut("good.xyz", lambda n: n // 2 + 7),
        TIMELESS,
        r"cut-good\.xyz: cannot read the file with ASE",
    ),
    Case(
        "xyz-text-coordinate",
        "a coordinate that is a word",
        text("bad.xyz", xyz(x=lambda t: "abc" if t == 3 else t)),
        TIMELESS,
        r"bad\.xyz: cannot read the file with ASE \(could not convert string to float: 'abc'\)",
    ),
    Case(
        "xyz-nan",
        "a nan coordinate",
        text("bad.xyz", xyz(x=lambda t: "nan" if t == 3 else t)),
        TIMELESS,
        r"bad\.xyz: 1 frame\(s\) contain NaN or inf coordinates \(first: frame 3\)",
    ),
    Case(
        "xyz-count-mismatch",
        "atom-count line says 3, frames have 2",
        text("bad.xyz", xyz(count=3)),
        TIMELESS,
        r"bad\.xyz: cannot read the file with ASE",
    ),
    Case(
        "xyz-unknown-element",
        "element symbol Xx",
        text("bad.xyz", xyz(symbol="Xx")),
        TIMELESS,
        r"bad\.xyz: cannot read the file with ASE",
    ),
    Case("xyz-empty", "an empty file", text("bad.xyz", ""), TIMELESS, r"bad\.xyz: the file is empty"),
    Case(
        "xyz-no-atoms",
        "frames of 0 atoms",
        text("bad.xyz", "0\n\n0\n\n"),
        TIMELESS,
        r"bad\.xyz: the trajectory has no atoms",
    ),
    Case("xyz-directory", "a directory named like an xyz", directory("run.xyz"), TIMELESS, r"run\.xyz: is a directory"),
    # extended XYZ
    Case(
        "extxyz-truncated",
        "extxyz cut within a frame",
        cut("good.extxyz", lambda n: n // 2 + 7),
        TIMELESS,
        r"cut-good\.extxyz: cannot read the file with ASE",
    ),
    Case(
        "extxyz-dt-text",
        "dt_fs=abc in the comment line",
        text("bad.extxyz", xyz(comment=lambda t: "dt_fs=abc")),
        INSPECT,
        r"bad\.extxyz: dt_fs must be one number, got 'abc'",
    ),
    Case(
        "extxyz-time-text",
        "time=abc in the comment lines (CP2K style)",
        text("bad.extxyz", xyz(comment=lambda t: "time=abc")),
        INSPECT,
        r"bad\.extxyz: time must be one number",
    ),
    Case(
        "extxyz-inf",
        "an inf coordinate",
        ase_file("extxyz", INF_R),
        TIMELESS,
        r"bad\.extxyz: 1 frame\(s\) contain NaN or inf",
    ),
    Case(
        "extxyz-atoms-change",
        "frames from 3 on have 4 atoms, not 5",
        ase_file("extxyz", R, split_at=3),
        TIMELESS,
        r"bad\.extxyz: the atoms change at frame 3",
    ),
    Case(
        "extxyz-directory",
        "a directory named like an extxyz",
        directory("run.extxyz"),
        TIMELESS,
        r"run\.extxyz: is a directory",
    ),
    # ASE trajectory
    Case(
        "traj-truncated",
        "traj cut to 60% of its bytes",
        cut("good.traj", lambda n: n * 6 // 10),
        TIMELESS,
        r"cut-good\.traj: cannot read the file with ASE",
    ),
    Case("traj-nan", "NaN in frame 7", ase_file("traj", NAN_R), TIMELESS, r"bad\.traj: 1 frame\(s\) contain NaN"),
    Case(
        "traj-atoms-change",
        "frames from 3 on have 4 atoms, not 5",
        ase_file("traj", R, split_at=3),
        TIMELESS,
        r"bad\.traj: the atoms change at frame 3",
    ),
    Case(
        "traj-no-frames",
        "an ASE trajectory file holding no frame",
        empty_traj,
        TIMELESS,
        r"bad\.traj: the trajectory has no frames",
    ),
    Case(
        "traj-directory", "a directory named like a traj", directory("run.traj"), TIMELESS, r"run\.traj: is a directory"
    ),
    # DCD
    Case(
        "dcd-truncated",
        "dcd cut to 60% of its bytes",
        cut("good.dcd", lambda n: n * 6 // 10),
        WITH_TOP,
        r"cut-good\.dcd: the file is truncated: its header declares 60 frames but only 3\d could be read",
    ),
    Case(
        "dcd-last-frame-cut",
        "dcd missing the last 4 bytes",
        cut("good.dcd", lambda n: n - 4),
        WITH_TOP,
        r"cut-good\.dcd: the file is truncated: its header declares 60 frames but only 59",
    ),
    Case("dcd-nan", "NaN in frame 7", mdtraj_file("dcd", NAN_R), WITH_TOP, r"bad\.dcd: 1 frame\(s\) contain NaN"),
    Case(
        "dcd-topology-mismatch",
        "topology of 3 atoms for 5",
        lambda src, tmp: src / "good.dcd",
        WITH_THREE,
        r"good\.dcd: cannot read the file with mdtraj \(The topology and the trajectory files might not contain",
    ),
    Case(
        "dcd-no-frames",
        "a dcd of 0 frames",
        mdtraj_file("dcd", R[:0]),
        WITH_TOP,
        r"bad\.dcd: cannot read the file with mdtraj",
    ),
    Case(
        "dcd-topology-directory",
        "the topology is a directory",
        directory("top.pdb"),
        ("inspect", "{src}/good.dcd", "--dt-fs", "0.5", "--topology", "{bad}"),
        r"top\.pdb: is a directory, not a topology file",
    ),
    Case("dcd-directory", "a directory named like a dcd", directory("run.dcd"), WITH_TOP, r"run\.dcd: is a directory"),
    # XTC
    Case(
        "xtc-last-frame-cut",
        "xtc cut 3 bytes into its last frame (mdtraj alone drops that frame silently)",
        cut("good.xtc", lambda n: n - 113),
        WITH_TOP,
        r"cut-good\.xtc: the file is truncated: 6847 bytes is not a whole number of 4-byte XDR words",
    ),
    Case(
        "xtc-truncated",
        "xtc cut to 60% of its bytes plus 4 (within a frame)",
        cut("good.xtc", lambda n: n * 6 // 10 + 4),
        WITH_TOP,
        r"cut-good\.xtc: cannot read the file with mdtraj \(XTC read error",
    ),
    Case("xtc-nan", "NaN in frame 7", mdtraj_file("xtc", NAN_R), WITH_TOP, r"bad\.xtc: 1 frame\(s\) contain NaN"),
    Case(
        "xtc-topology-mismatch",
        "topology of 3 atoms for 5",
        lambda src, tmp: src / "good.xtc",
        WITH_THREE,
        r"good\.xtc: cannot read the file with mdtraj \(The topology and the trajectory",
    ),
    Case("xtc-no-frames", "an xtc of 0 frames", mdtraj_file("xtc", R[:0]), WITH_TOP, r"bad\.xtc: the file is empty"),
    Case("xtc-directory", "a directory named like an xtc", directory("run.xtc"), WITH_TOP, r"run\.xtc: is a directory"),
    # TRR
    Case(
        "trr-last-frame-cut",
        "trr cut 3 bytes into its last frame (mdtraj alone drops that frame silently)",
        cut("good.trr", lambda n: n - 177),
        WITH_TOP,
        r"cut-good\.trr: the file is truncated: 10623 bytes is not a whole number of 4-byte XDR words",
    ),
    Case(
        "trr-truncated",
        "trr cut to 60% of its bytes plus 4 (within a frame)",
        cut("good.trr", lambda n: n * 6 // 10 + 4),
        WITH_TOP,
        r"cut-good\.trr: cannot read the file with mdtraj \(TRR read error",
    ),
    Case(
        "trr-inf", "inf in frame 7", mdtraj_file("trr", INF_R), WITH_TOP, r"bad\.trr: 1 frame\(s\) contain NaN or inf"
    ),
    Case(
        "trr-topology-mismatch",
        "topology of 3 atoms for 5",
        lambda src, tmp: src / "good.trr",
        WITH_THREE,
        r"good\.trr: cannot read the file with mdtraj \(The topology and the trajectory",
    ),
    Case("trr-directory", "a directory named like a trr", directory("run.trr"), WITH_TOP, r"run\.trr: is a directory"),
    # AMBER NetCDF
    Case(
        "nc-truncated",
        "nc cut to 60% of its bytes",
        cut("good.nc", lambda n: n * 6 // 10),
        WITH_TOP,
        r"cut-good\.nc: cannot read the file with mdtraj",
    ),
    Case("nc-nan", "NaN in frame 7", mdtraj_file("nc", NAN_R), WITH_TOP, r"bad\.nc: 1 frame\(s\) contain NaN"),
    Case(
        "nc-topology-mismatch",
        "topology of 3 atoms for 5",
        lambda src, tmp: src / "good.nc",
        WITH_THREE,
        r"good\.nc: cannot read the file with mdtraj \(The topology and the trajectory",
    ),
    Case(
        "nc-no-frames",
        "an nc of 0 frames",
        mdtraj_file("nc", R[:0]),
        WITH_TOP,
        r"bad\.nc: the trajectory has no frames",
    ),
    Case("nc-directory", "a directory named like an nc", directory("run.nc"), WITH_TOP, r"run\.nc: is a directory"),
    # MDTraj HDF5
    Case(
        "h5-truncated",
        "h5 missing its last 40 bytes",
        cut("good.h5", lambda n: n - 40),
        TIMELESS,
        r"cut-good\.h5: cannot read the file \(truncated file: eof = \d+, sblock->base_addr = 0, stored_eof",
    ),
    Case("h5-inf", "inf in frame 7", mdtraj_file("h5", INF_R), TIMELESS, r"bad\.h5: 1 frame\(s\) contain NaN or inf"),
    Case(
        "h5-no-frames",
        "an h5 of 0 frames",
        mdtraj_file("h5", R[:0]),
        TIMELESS,
        r"bad\.h5: the trajectory has no frames",
    ),
    Case("h5-directory", "a directory named like an h5", directory("run.h5"), TIMELESS, r"run\.h5: is a directory"),
    # multi-model PDB
    Case(
        "pdb-last-model-cut",
        "pdb cut inside its last MODEL (mdtraj alone drops that model silently)",
        edited("good.pdb", last_model_cut),
        TIMELESS,
        r"bad-good\.pdb: the file is truncated: 60 MODEL records but 59 ENDMDL",
    ),
    Case(
        "pdb-atoms-change",
        "MODEL 2 lacks an atom",
        edited("good.pdb", lambda pdb: without_atom_line(pdb, 2)),
        TIMELESS,
        r"bad-good\.pdb: cannot read the file \(PDB Error: All MODELs must contain the same number of ATOMs\)",
    ),
    Case(
        "pdb-text-coordinate",
        "a coordinate that is a word",
        edited("good.pdb", lambda pdb: replace_coordinate(pdb, "abc")),
        TIMELESS,
        r"bad-good\.pdb: cannot read the file \(",
    ),
    Case(
        "pdb-nan",
        "a nan coordinate",
        edited("good.pdb", lambda pdb: replace_coordinate(pdb, "nan")),
        TIMELESS,
        r"bad-good\.pdb: 1 frame\(s\) contain NaN or inf coordinates \(first: frame 0\)",
    ),
    Case(
        "pdb-no-atoms",
        "a pdb of no atoms",
        text("bad.pdb", "REMARK nothing here\nEND\n"),
        TIMELESS,
        r"bad\.pdb: no ATOM or HETATM records",
    ),
    Case("pdb-directory", "a directory named like a pdb", directory("run.pdb"), TIMELESS, r"run\.pdb: is a directory"),
    # the generator's inputs and output
    Case(
        "simulate-structure-directory",
        "`asteroid simulate --structure` a directory",
        directory("mol.xyz"),
        ("simulate", "--structure", "{bad}", "--out", "{tmp}/out.npz"),
        r"mol\.xyz: is a directory",
    ),
    Case(
        "simulate-structure-truncated",
        "`asteroid simulate --structure` an xyz cut in half",
        cut("good.xyz", lambda n: n // 2 - 20),
        ("simulate", "--structure", "{bad}", "--out", "{tmp}/out.npz"),
        r"cut-good\.xyz: cannot read a structure",
    ),
    Case(
        "simulate-out-directory",
        "`asteroid simulate --out` a directory (refused before the run)",
        directory("out.npz"),
        ("simulate", "--molecule", "ethanol", "--out", "{bad}"),
        r"out\.npz: is a directory; give a file name",
    ),
    Case(
        "predicted-dt-text",
        "`asteroid analyze` of a predicted .npz whose dt_fs is text",
        npz(dt_fs="abc"),
        ("analyze", "{bad}", "--reference", "{src}/good.npz", "--out", "{tmp}/report"),
        r"bad\.npz: dt_fs must be one number, got 'abc'",
    ),
    Case(
        "predicted-z-text",
        "`asteroid analyze` of a predicted .npz whose z is element symbols",
        npz(z=np.array(["O", "C", "H", "H", "H"])),
        ("analyze", "{bad}", "--reference", "{src}/good.npz", "--out", "{tmp}/report"),
        r"bad\.npz: z must hold atomic numbers \(integers\)",
    ),
    Case(
        "predicted-R-text",
        "`asteroid analyze` of a predicted .npz whose R is text",
        npz(R=np.array([["x"]])),
        ("analyze", "{bad}", "--reference", "{src}/good.npz", "--out", "{tmp}/report"),
        r"bad\.npz: R must hold numbers \(Angstrom\)",
    ),
    Case(
        "extxyz-dt-varies",
        "extxyz whose frames state dt_fs=0.5, then dt_fs=1",
        text("bad.extxyz", xyz(comment=lambda t: f"dt_fs={0.5 if t < 5 else 1.0}")),
        INSPECT,
        r"bad\.extxyz: its frames state different dt_fs \(0\.5, 1 fs\)",
    ),
    Case(
        "simulate-out-is-structure",
        "`asteroid simulate --out` naming its own --structure file",
        text("water.xyz", "3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"),
        ("simulate", "--structure", "{bad}", "--out", "{bad}"),
        r"--out \S*water\.xyz: is the --structure file this command reads",
    ),
    Case(
        "simulate-out-under-proc",
        "`asteroid simulate --out /proc/x.npz` (a folder no file can be made in, even by root)",
        nothing,
        ("simulate", "--molecule", "ethanol", "--out", "/proc/x.npz"),
        r"/proc/x\.npz: cannot be written in /proc",
    ),
    Case(
        "analyze-tensorboard-a-file",
        "`asteroid analyze --tensorboard` naming a file (refused before the analysis)",
        text("events", "not a folder"),
        ("analyze", "{src}/good.npz", "--reference", "{src}/good.npz", "--tensorboard", "{bad}"),
        r"events: is a file; give a folder",
    ),
]

FIT = ("fit", "{tiny}")
BAD_CONFIGS = [
    Case(
        "config-binary",
        "a config file of binary bytes",
        binary("bad.yaml", bytes(range(256))),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: not a text file; a config file is YAML text",
    ),
    Case(
        "config-cache-dir-a-file",
        "`--data.cache_dir` naming a file",
        text("afile", "x"),
        FIT + ("--data.cache_dir", "{bad}"),
        r"data\.cache_dir \S*afile: is a file; give a folder",
    ),
    Case(
        "config-runs-a-file",
        "`runs` (where every run writes) is a file",
        text("runs", "x"),
        FIT,
        r"runs/bad: cannot be created, runs is a file",
    ),
    Case(
        "config-seed-negative",
        "`--seed_everything -1`",
        nothing,
        FIT + ("--seed_everything", "-1"),
        r"seed_everything must be between 0 and 4294967295",
    ),
    Case(
        "config-two-molecules-bonded",
        "two molecules in data.sources with model.bond_constraints on",
        two_molecules,
        FIT + ("--data.sources", "{bad}"),
        r"data\.sources holds 2 molecules \(CH3O, C2H6O\), but model\.bond_constraints fits its bond table to one",
    ),
    Case(
        "config-unknown-key",
        "unknown key model.net.init_args.hiddne in a config file",
        text("bad.yaml", "model:\n  net:\n    init_args:\n      hiddne: 3\n"),
        FIT + ("--config", "{bad}"),
        r"model\.net\.init_args\.hiddne: Option 'hiddne' is not accepted \(in .*bad\.yaml\)",
    ),
    Case(
        "config-unknown-trainer-key",
        "unknown key trainer.max_step in a config file",
        text("bad.yaml", "trainer:\n  max_step: 3\n"),
        FIT + ("--config", "{bad}"),
        r"trainer\.max_step: Subcommand 'fit' does not accept option 'trainer\.max_step' \(in .*bad\.yaml\)",
    ),
    Case(
        "config-unknown-source-key",
        "a data source with `pth:` for `path:`",
        text("bad.yaml", "data:\n  sources:\n    - pth: toy.npz\n"),
        FIT + ("--config", "{bad}"),
        r"data\.sources\.init_args\.pth: Option 'pth' is not accepted \(in .*bad\.yaml\)",
    ),
    Case(
        "config-wrong-type-file",
        "data.history: eight, in a config file",
        text("bad.yaml", "data:\n  history: eight\n"),
        FIT + ("--config", "{bad}"),
        r"data\.history: expected int, got 'eight' \(in .*bad\.yaml\)",
    ),
    Case(
        "config-wrong-type-cli",
        "--trainer.max_epochs many",
        nothing,
        FIT + ("--trainer.max_epochs", "many"),
        r"trainer\.max_epochs: expected int, got 'many' \(on the command line\)",
    ),
    Case(
        "config-wrong-bool",
        "--model.net.init_args.local_attention maybe",
        nothing,
        FIT + ("--model.net.init_args.local_attention", "maybe"),
        r"model\.net\.init_args\.local_attention: Expected a bool\. Got value: maybe \(on the command line\)",
    ),
    Case(
        "config-unknown-model",
        "--model.net.class_path asteroid.models.Nope",
        nothing,
        FIT + ("--model.net.class_path", "asteroid.models.Nope"),
        r"model\.net: module 'asteroid\.models' has no attribute 'Nope' \(on the command line\)",
    ),
    Case(
        "config-history-too-long",
        "history of 8 x 10 frames on a 12-frame trajectory",
        short_trajectory,
        FIT + ("--data.sources", '[{"path": "{bad}"}]', "--data.history", "8", "--data.spacing", "10"),
        r"short\.npz: trajectory too short: 12 frames, but one window spans \d+ frames",
    ),
    Case(
        "config-batch-zero",
        "--data.batch_size 0",
        nothing,
        FIT + ("--data.batch_size", "0"),
        r"data\.batch_size must be >= 1, got 0",
    ),
    Case(
        "config-lr-negative",
        "--model.lr -1",
        nothing,
        FIT + ("--model.lr", "-1"),
        r"model\.lr must be a positive number, got -1\.0",
    ),
    Case(
        "config-max-epochs-negative",
        "--trainer.max_epochs -5 (Lightning's own check)",
        nothing,
        FIT + ("--trainer.max_epochs", "-5"),
        r"`max_epochs` must be a non-negative integer or -1",
    ),
    Case(
        "fit-diverges",
        "--model.lr 1e6: the weights blow up within a few steps",
        nothing,
        FIT + ("--model.lr", "1e6"),
        r"training diverged (at|by) step \d+: the (validation )?loss is (nan|inf)",
    ),
    Case(
        "fit-coordinates-1e30",
        "coordinates near 1e30 Angstrom (600 frames, enough for the windows)",
        npz(R=harmonic_frames(600) * 1e30),
        FIT + ("--data.sources", '[{"path": "{bad}"}]'),
        r"bad\.npz: coordinates reach [\d.]+e\+30 Angstrom, where float32",
    ),
    Case(
        "fit-coordinates-offset-1e6",
        "a good trajectory moved 1e6 Angstrom away (float32 rounds to 0.06 A there)",
        npz(R=harmonic_frames(600).astype(np.float64) + 1e6),
        FIT + ("--data.sources", '[{"path": "{bad}"}]'),
        r"bad\.npz: coordinates reach 1e\+06 Angstrom, where float32 .* rounds to 0\.062 Angstrom; centre",
    ),
    Case(
        "config-val-check-interval-0",
        "--trainer.val_check_interval 0",
        nothing,
        FIT + ("--trainer.val_check_interval", "0"),
        r"trainer\.val_check_interval must be > 0 .*got 0",
    ),
    Case(
        "config-abbreviated",
        "--trainer.max_step 300 (a prefix of max_steps)",
        nothing,
        FIT + ("--trainer.max_step", "300"),
        r"--trainer\.max_step: unknown option; did you mean --trainer\.max_steps\?",
    ),
    Case(
        "config-weight-decay-negative",
        "--model.weight_decay -0.1",
        nothing,
        FIT + ("--model.weight_decay", "-0.1"),
        r"model\.weight_decay must be >= 0, got -0\.1",
    ),
    Case(
        "config-sampling-prob-5",
        "--model.max_sampling_prob 5",
        nothing,
        FIT + ("--model.max_sampling_prob", "5"),
        r"model\.max_sampling_prob is a probability, in \[0, 1\]; got 5",
    ),
    Case(
        "config-aux-weight-negative",
        "a negative STI loss weight",
        nothing,
        FIT + ("--model.aux_loss_weights", '{"sti_primary": -1, "sti_consistency": 0.1, "sti_conjugate": 0.1}'),
        r"model\.aux_loss_weights\.sti_primary must be >= 0, got -1",
    ),
    Case(
        "config-num-workers-negative",
        "--data.num_workers -1",
        nothing,
        FIT + ("--data.num_workers", "-1"),
        r"data\.num_workers must be >= 0, got -1",
    ),
    Case(
        "config-hidden-zero",
        "--model.net.init_args.hidden 0",
        nothing,
        FIT + ("--model.net.init_args.hidden", "0"),
        r"model: hidden=0, .* must all be >= 1",
    ),
    Case(
        "compare-seeds-negative",
        "compare --seeds -2",
        nothing,
        ("compare", "--molecules", "ethanol", "--models", "egnn", "--seeds", "-2"),
        r"argument --seeds: must be positive, got -2",
    ),
    Case(
        "compare-budget-negative",
        "compare --budget-minutes -1 (0 means equal steps)",
        nothing,
        ("compare", "--molecules", "ethanol", "--models", "egnn", "--budget-minutes", "-1"),
        r"argument --budget-minutes: must be >= 0",
    ),
    Case(
        "compare-abbreviated",
        "compare --budget 3 (a prefix of --budget-minutes)",
        nothing,
        ("compare", "--molecules", "ethanol", "--models", "egnn", "--budget", "3"),
        r"--budget: unknown option; did you mean --budget-minutes\?",
    ),
    Case(
        "benchmark-device-tpu",
        "benchmark --device tpu",
        nothing,
        ("benchmark", "--molecules", "ethanol", "--device", "tpu"),
        r"--device tpu: not a torch device",
    ),
    Case(
        "benchmark-json-directory",
        "benchmark --json DIR (refused before the timing, not after)",
        directory("out.json"),
        ("benchmark", "--molecules", "ethanol", "--json", "{bad}"),
        r"out\.json: is a directory; give a file name",
    ),
    Case(
        "rollout-out-directory",
        "rollout --out DIR.xyz",
        directory("pred.xyz"),
        ("rollout", "--ckpt_path", "x.ckpt", "--out", "{bad}"),
        r"pred\.xyz: is a directory; give a file name",
    ),
    Case(
        "rollout-out-under-a-file",
        "rollout --out inside a path that is a file",
        text("blocker", "x"),
        ("rollout", "--ckpt_path", "x.ckpt", "--out", "{bad}/pred.xyz"),
        r"blocker/pred\.xyz: cannot be created, ",
    ),
    Case(
        "simulate-out-under-a-file",
        "simulate --out inside a path that is a file",
        text("blocker", "x"),
        ("simulate", "--molecule", "ethanol", "--frames", "10", "--out", "{bad}/e.npz"),
        r"blocker/e\.npz: cannot be created, ",
    ),
    Case(
        "compare-out-file",
        "compare --out a file",
        text("results", "x"),
        ("compare", "--molecules", "ethanol", "--models", "egnn", "--out", "{bad}"),
        r"results: is a file; give a folder",
    ),
    Case(
        "analyze-out-file",
        "analyze --out a file",
        text("report", "x"),
        ("analyze", "{src}/good.npz", "--reference", "{src}/good.npz", "--out", "{bad}"),
        r"report: is a file; give a folder",
    ),
    Case(
        "config-duplicate-key",
        "a config file with `model:` twice (YAML would keep the last silently)",
        text("bad.yaml", "model:\n  lr: 0.1\ndata:\n  batch_size: 4\nmodel:\n  weight_decay: 0.0\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: not valid YAML \(key 'model' appears twice \(line 5\)",
    ),
    Case(
        "config-duplicate-nested-key",
        "a config file with trainer.max_steps twice",
        text("bad.yaml", "trainer:\n  max_steps: 10\n  max_steps: 20\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: not valid YAML \(key 'max_steps' appears twice \(line 3\)",
    ),
    Case(
        "config-extends-list",
        "`extends:` given a list",
        text("bad.yaml", "extends: [a.yaml, b.yaml]\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: `extends` names one config file, got \['a\.yaml', 'b\.yaml'\]",
    ),
    Case(
        "config-extends-number",
        "`extends:` given a number",
        text("bad.yaml", "extends: 3\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: `extends` names one config file, got 3",
    ),
    Case(
        "config-empty",
        "an empty config file",
        text("bad.yaml", ""),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: the config file is empty",
    ),
    Case(
        "config-a-list",
        "a config file that is a YAML list",
        text("bad.yaml", "- model\n- data\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: a config file holds keys and values",
    ),
    Case(
        "config-not-yaml",
        "a config file that is not valid YAML",
        text("bad.yaml", "data: [unclosed\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: not valid YAML",
    ),
    Case(
        "config-extends-loop",
        "a config that extends itself",
        text("bad.yaml", "extends: bad.yaml\n"),
        FIT + ("--config", "{bad}"),
        r"bad\.yaml: `extends` loops back to itself",
    ),
    Case(
        "config-directory",
        "--config a directory",
        directory("configs"),
        FIT + ("--config", "{bad}"),
        r"config: Path is not a file: '.*configs'",
    ),
    Case(
        "config-missing",
        "--config a file that does not exist",
        nothing,
        FIT + ("--config", "{tmp}/nowhere.yaml"),
        r"config: File does not exist: '.*nowhere\.yaml'",
    ),
    Case(
        "config-source-directory",
        "a data source that is a directory",
        directory("data.npz"),
        FIT + ("--data.sources", '[{"path": "{bad}"}]'),
        r"data\.npz: is a directory, not a trajectory file",
    ),
    Case(
        "config-ckpt-directory",
        "--ckpt_path a directory",
        directory("ckpt"),
        FIT + ("--ckpt_path", "{bad}"),
        r"ckpt: is a directory, not a checkpoint file",
    ),
    Case(
        "config-ckpt-garbage",
        "--ckpt_path a file that is no checkpoint",
        text("model.ckpt", "weights"),
        FIT + ("--ckpt_path", "{bad}"),
        r"model\.ckpt: not a readable asteroid checkpoint",
    ),
]

FUZZ = {
    "fuzz-npz-arrays": "npz files of random arrays: R, z, dt_fs, E of random dtypes, shapes and values "
    "(NaN, inf, complex, text), keys dropped at random",
    "fuzz-npz-bytes": "a good npz with random bytes overwritten and a random cut",
    "fuzz-xyz-text": "xyz text of random frames: wrong atom counts, unknown symbols, nan / inf / words as "
    "coordinates, dt_fs and time in the comment lines",
    "fuzz-xyz-bytes": "a good extended XYZ with random bytes overwritten and a random cut",
}


# ---- the Python API ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiCase:
    """One bad call of the Python API on a tiny trained model: it must raise an AsteroidError of one line."""

    id: str
    what: str
    call: Callable  # (model, frames (T, N, 3), atoms [Atoms], checkpoint path) -> anything; must raise
    expect: str  # regex the message must match from its start


def _atoms(frames, numbers):
    from ase import Atoms

    return [Atoms(numbers=numbers, positions=frame) for frame in frames]


API_CASES = [
    ApiCase("api-frames-float", "`model.rollout(history, 16.0)`", lambda m, h, a, c: m.rollout(h, 16.0),
            r"frames must be an integer, got 16\.0"),
    ApiCase("api-frames-zero", "`model.rollout(history, 0)`", lambda m, h, a, c: m.rollout(h, 0),
            r"frames must be an integer >= 1, got 0"),
    ApiCase("api-thermostat-negative", "`model.rollout(history, 4, thermostat=-1)` (the CLI refuses it too)",
            lambda m, h, a, c: m.rollout(h, 4, thermostat=-1), r"thermostat must be a finite number >= 0"),
    ApiCase("api-sample-text", "`model.forecast(history, sample='yes')`",
            lambda m, h, a, c: m.forecast(h, sample="yes"), r"sample must be True or False"),
    ApiCase("api-huge-coordinates", "a history of 1e30 Angstrom", lambda m, h, a, c: m.forecast(h * 1e30),
            r"history holds a coordinate of \S+ Angstrom"),
    ApiCase("api-nan-history", "a history holding NaN", lambda m, h, a, c: m.forecast(np.where(h > 0, np.nan, h)),
            r"history holds NaN or infinity"),
    ApiCase("api-atoms-of-two-sizes", "ase.Atoms frames of different atom counts",
            lambda m, h, a, c: m.forecast(a[:2] + _atoms(h[2:, :-1], a[0].numbers[:-1])),
            r"history: frame 2 has 8 atoms, frame 0 9"),
    ApiCase("api-atoms-other-elements", "ase.Atoms frames whose elements differ",
            lambda m, h, a, c: m.forecast(a[:-1] + _atoms(h[-1:], np.roll(a[0].numbers, 1))),
            r"history: frame \d+ holds other elements"),
    ApiCase("api-file-name", "`model.forecast('frames.xyz')`", lambda m, h, a, c: m.forecast("frames.xyz"),
            r"history must be frames \(T, N, 3\) Angstrom or ase\.Atoms, not a file name"),
    ApiCase("api-unknown-molecule", "a history of water for an ethanol model",
            lambda m, h, a, c: m.forecast(h[:, :3], z=[8, 1, 1]), r"history: its atoms \(H2O"),
    ApiCase("api-dynamics-empty", "`ForecastDynamics(model, [])`",
            lambda m, h, a, c: asteroid_api.ForecastDynamics(m, []), r"history has 0 frame\(s\); the model needs"),
    ApiCase("api-dynamics-option", "`ForecastDynamics(model, atoms, friction=1)`",
            lambda m, h, a, c: asteroid_api.ForecastDynamics(m, a, friction=1), r"ForecastDynamics: unknown option"),
    ApiCase("api-dynamics-steps", "`ForecastDynamics(...).run(2.5)`",
            lambda m, h, a, c: asteroid_api.ForecastDynamics(m, a).run(2.5), r"steps must be an integer"),
    ApiCase("api-dynamics-interval", "`ForecastDynamics(...).attach(print, 0)`",
            lambda m, h, a, c: asteroid_api.ForecastDynamics(m, a).attach(print, 0), r"interval must be an integer"),
    ApiCase("api-load-device", "`asteroid.load(checkpoint, device='tpu')`",
            lambda m, h, a, c: asteroid_api.load(c, device="tpu"), r"device 'tpu' is not a torch device"),
    ApiCase("api-load-cuda", "`asteroid.load(checkpoint, device='cuda')` on a machine without CUDA",
            lambda m, h, a, c: asteroid_api.load(c, device="cuda") if not torch.cuda.is_available() else
            asteroid_api.load(c, device="cuda:99"), r"device 'cuda(:99)?'"),
    ApiCase("api-load-number", "`asteroid.load(3)`", lambda m, h, a, c: asteroid_api.load(3),
            r"checkpoint must be a file path or run name"),
]  # fmt: skip


@pytest.fixture(scope="module")
def api_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert (
            asteroid(["fit", *tiny_args(folder, "api"), "--trainer.max_epochs", "1", "--test_after_fit", "false"]) == 0
        )
    checkpoint = folder / "runs/api/version_0/checkpoints/last.ckpt"
    model = asteroid_api.load(checkpoint)
    with np.load(folder / "toy.npz") as data:
        frames, numbers = data["R"][: 8 * model.spacing : model.spacing].astype(np.float64), data["z"]
    return model, frames, _atoms(frames, numbers), checkpoint


@pytest.mark.parametrize("case", API_CASES, ids=lambda case: case.id)
def test_bad_api_call(case, api_model, report):
    from asteroid.errors import AsteroidError

    try:
        case.call(*api_model)
    except AsteroidError as error:
        message = str(error)
        report.record(case.id, f"{type(error).__name__}: `{message}`")
        assert "\n" not in message and re.match(rf"(?:{case.expect})", message), message
    except Exception as error:  # noqa: BLE001 - the report says what else came
        report.record(case.id, f"CRASH: {type(error).__name__}: {error}")
        raise
    else:
        report.record(case.id, "accepted")
        pytest.fail(f"{case.id}: accepted")


FAULTS = {
    "fit-two-at-once": "two `asteroid fit` started together with the same --name",
    "fit-resume-while-running": "`asteroid fit --ckpt_path last` while that run is still training",
    "fit-kill-mid-epoch": "SIGKILL of both runs after their first checkpoint, while they train on, then "
    "`--ckpt_path last`",
    "fit-kill-while-saving": "SIGKILL halfway through writing last.ckpt (a test-only checkpoint writer), "
    "then `--ckpt_path last`",
    "fit-sigterm": "SIGTERM (a pre-empted SLURM job) and SIGINT (Ctrl+C) to `asteroid fit` mid-epoch, then "
    "`--ckpt_path last`",
    "rollout-sigterm": "SIGTERM, SIGINT (Ctrl+C) and SIGKILL to `asteroid rollout` while it rolls out 100,000 frames",
    "simulate-kill": "SIGKILL of `asteroid simulate` after its checkpoints began, then `--resume`; "
    "compared with an uninterrupted run",
    "disk-full-cache": "`asteroid fit` whose coordinate cache goes to a 64 KiB tmpfs (a real full disk)",
    "disk-full-checkpoint": "`asteroid fit` whose run folder is on a 256 KiB tmpfs: the logs fit, the first "
    "checkpoint (430 KB) does not",
    "disk-full-simulate": "`asteroid simulate --out` onto a 16 KiB tmpfs",
    "disk-full-rollout": "`asteroid rollout --out` onto a 16 KiB tmpfs (200 frames of 9 atoms as .xyz, about 60 KB)",
}
NOT_DETECTABLE = """## What the readers cannot detect

- An XTC, TRR, XYZ or multi-model PDB file cut exactly between two frames is a valid, shorter trajectory: these
  formats record no frame count, so nothing tells it from a complete file.
- A DCD whose header states no frame count (0) is read as far as it goes (NAMD and CHARMM write the count).
- AMBER NetCDF and HDF5 files are read through scipy / netCDF4 and PyTables, which check the size the file states;
  their messages are passed on in one line.
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Collects every case's outcome; `make reliability-report` writes docs/reliability.md when the whole sweep ran."""
    sections = {
        "Bad files: `asteroid inspect` and `asteroid simulate`": {c.id: c.what for c in BAD_FILES},
        "Bad configs: `asteroid fit`": {c.id: c.what for c in BAD_CONFIGS},
        "Bad calls of the Python API": {c.id: c.what for c in API_CASES},
        "Fuzzing the npz and xyz readers (hypothesis)": FUZZ,
        "Faults: killed and concurrent runs": FAULTS,
    }
    sweep = Report(sections, tmp_path_factory.getbasetemp())
    yield sweep
    if sweep.complete() and os.environ.get("ASTEROID_RELIABILITY_REPORT"):  # `make reliability-report`
        bad = len(BAD_FILES) + len(BAD_CONFIGS) + len(API_CASES)
        ended = Counter(
            outcome.split(":")[0]
            for case_id, outcome in sweep.seen.items()
            if case_id not in FAULTS and case_id not in FUZZ
        )
        intro = (
            f"Written by `make reliability-report` (the sweep of `tests/integration/test_reliability.py`); change the "
            f"cases there, not here. {bad} bad-input cases ({len(BAD_FILES)} files, {len(BAD_CONFIGS)} "
            f"configs, {len(API_CASES)} calls of the Python API; how they ended: "
            f"{', '.join(f'{n} {how}' for how, n in sorted(ended.items()))}), "
            f"{len(FUZZ)} fuzz properties of {FUZZ_SETTINGS.max_examples} generated files each, and "
            f"{len(FAULTS)} fault cases. A bad input passes when the command prints one line `asteroid: error: "
            "<file or key>: <problem>`, exits with status 2, shows "
            "no traceback and ends within 60 s; a bad API call when it raises one of the project's errors "
            "(`asteroid.errors.AsteroidError`) with a one-line message naming the argument."
        )
        sweep.write(DOC, intro, NOT_DETECTABLE)


def describe(outcome) -> str:
    if outcome.hung:
        return "HUNG: killed after the time limit"
    if outcome.error:
        return f"CRASH: {outcome.error}: {outcome.message}"
    line = outcome.last_line
    if outcome.returned == "2" and line.startswith("asteroid: error: "):
        quote = "``" if "`" in line else "`"  # markdown: a message holding backticks needs a longer fence
        return f"exit 2: {quote} {line.removeprefix('asteroid: error: ')} {quote}"
    return f"exit {outcome.returned}: {line}"


def check_refused(outcome, expect: str, only_line: bool) -> None:
    assert not outcome.hung, f"no answer within the time limit; output so far:\n{outcome.output}"
    assert "Traceback" not in outcome.output and outcome.error is None, outcome.output
    assert outcome.returned == "2", outcome.output
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1 or not only_line, outcome.output
    assert lines[-1].startswith("asteroid: error: "), outcome.output
    assert re.match(rf"(?:\S*/)?(?:{expect})", lines[-1].removeprefix("asteroid: error: ")), lines[-1]


@pytest.mark.parametrize("case", BAD_FILES, ids=lambda case: case.id)
def test_bad_file(case, originals, tmp_path, report):
    outcome = isolated(asteroid, case.command(originals, tmp_path, case.make(originals, tmp_path)), timeout=60)
    report.record(case.id, describe(outcome))
    check_refused(outcome, case.expect, only_line=True)


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=lambda case: case.id)
def test_bad_config(case, originals, tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    outcome = isolated(asteroid, case.command(originals, tmp_path, case.make(originals, tmp_path)), timeout=60)
    report.record(case.id, describe(outcome))
    check_refused(outcome, case.expect, only_line=False)


# ---- fuzzing -------------------------------------------------------------------------------------------------------
FUZZ_SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, database=None)


def read_or_refuse(path: Path, **options) -> str:
    """'read' (with a usable trajectory) or 'refused' (DataError naming the file in one line); anything else fails."""
    try:
        with time_limit(20):
            traj = load_trajectory(path, **options)
    except DataError as error:
        assert str(error).startswith(f"{path}: ") and "\n" not in str(error), str(error)
        return "refused"
    T, N, three = traj.R.shape
    assert T >= 1 and N >= 1 and three == 3 and traj.R.dtype == np.float32 and np.isfinite(traj.R).all()
    assert traj.z.shape == (N,) and traj.z.min() >= 1 and traj.z.max() <= 118 and traj.dt_fs > 0
    return "read"


def tally_line(tally: Counter) -> str:
    return (
        f"{sum(tally.values())} generated files: {tally['read']} read as valid trajectories, "
        f"{tally['refused']} refused with a one-line DataError naming the file; no other exception, no hang"
    )


@st.composite
def npz_contents(draw):
    """A valid npz's arrays (T frames of N atoms), then none, one or several of them spoiled."""
    T, N = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    R = draw(arrays("f8", (T, N, 3), elements=st.floats(-10, 10)))
    contents = {"R": R, "z": draw(arrays("i8", N, elements=st.integers(1, 118))), "dt_fs": 0.5}
    spoil = {
        "R dtype": lambda: R.astype(draw(st.sampled_from(["f2", "i4", "c8", "?", "U3"]))),
        "R shape": lambda: R.reshape(draw(st.sampled_from([(T * N, 3), (T, N * 3), (T, N, 3, 1), (T * N * 3,)]))),
        "R values": lambda: np.where(draw(arrays("?", R.shape)), draw(st.sampled_from([np.nan, np.inf, 1e300])), R),
        "R empty": lambda: R[: draw(st.integers(0, T))][:, : draw(st.integers(0, N))],
        "z": lambda: draw(
            st.one_of(
                arrays("i8", draw(st.integers(0, N + 1)), elements=st.integers(-1, 130)),
                arrays("f8", N),
                arrays("U1", N),
                arrays("i8", (N, 1)),
            )
        ),
        "dt_fs": lambda: draw(st.one_of(st.floats(), st.text(max_size=3), st.lists(st.floats(0.1, 2), max_size=2))),
        "E": lambda: draw(arrays(draw(st.sampled_from(["f8", "U1"])), draw(st.sampled_from([(T,), (T, 1), (T + 1,)])))),
    }
    for key in draw(st.lists(st.sampled_from(sorted(spoil)), max_size=3, unique=True)):
        contents[key.split()[0]] = spoil[key]()
    for key in draw(st.lists(st.sampled_from(["R", "z", "dt_fs"]), max_size=1)):
        del contents[key]
    return contents


def corrupted(good: bytes):
    """Strategy: `good` with up to 8 bytes overwritten, then perhaps cut short."""
    edits = st.one_of(
        st.just([]), st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    )
    length = st.one_of(st.just(len(good)), st.integers(1, len(good)))
    return st.tuples(edits, length).map(lambda drawn: _apply(good, *drawn))


def _apply(good: bytes, edits, length: int) -> bytes:
    data = bytearray(good)
    for position, value in edits:
        data[position] = value
    return bytes(data[:length])


@st.composite
def xyz_text(draw):
    """XYZ frames of N atoms, mostly well-formed: now and then a wrong count, symbol or coordinate."""
    n = draw(st.integers(1, 3))
    usually = lambda good, *bad: st.sampled_from([good] * 40 + list(bad))  # noqa: E731
    frames = []
    for t in range(draw(st.integers(0, 4))):
        count = draw(usually(n, n + 1, n - 1))
        comment = draw(usually("", "dt_fs=0.5", "dt_fs=abc", f"time={0.5 * t}", "time=x", "Properties=bad"))
        atoms = [
            " ".join(
                [draw(usually("H", "O", "Xx", "7"))]
                + [draw(usually(f"{draw(st.floats(-5, 5)):.3f}", "nan", "inf", "abc", "1e400", "")) for _ in range(3)]
            )
            for _ in range(n)
        ]
        frames.append("\n".join([str(count), comment] + atoms) + "\n")
    return "".join(frames)


def fuzz(case_id: str, report, strategy, write, options=st.just({})):
    """Run `write(drawn) -> path` then `read_or_refuse` over generated inputs; record the tally."""
    tally = Counter()

    @FUZZ_SETTINGS
    @given(strategy, options)
    def check(drawn, given_options):
        tally[read_or_refuse(write(drawn), **given_options)] += 1

    check()
    report.record(case_id, tally_line(tally))
    assert tally["read"] and tally["refused"], tally  # both outcomes reached: inputs neither all good nor all junk


DT_OPTIONS = st.sampled_from([{"dt_fs": 0.5}] * 3 + [{}])


def test_fuzz_npz_arrays(tmp_path, report):
    def write(contents):
        np.savez(tmp_path / "fuzz.npz", **contents)
        return tmp_path / "fuzz.npz"

    fuzz("fuzz-npz-arrays", report, npz_contents(), write, DT_OPTIONS)


def test_fuzz_npz_bytes(tmp_path, report):
    np.savez(tmp_path / "good.npz", R=R[:10], z=Z, dt_fs=0.5)
    good = (tmp_path / "good.npz").read_bytes()

    def write(data):
        (tmp_path / "fuzz.npz").write_bytes(data)
        return tmp_path / "fuzz.npz"

    fuzz("fuzz-npz-bytes", report, corrupted(good), write)


def test_fuzz_xyz_text(tmp_path, report):
    def write(content):
        (tmp_path / "fuzz.xyz").write_text(content)
        return tmp_path / "fuzz.xyz"

    fuzz("fuzz-xyz-text", report, xyz_text(), write, DT_OPTIONS)


def test_fuzz_xyz_bytes(tmp_path, report):
    ase_write(tmp_path / "good.extxyz", R[:6], Z)
    good = (tmp_path / "good.extxyz").read_bytes()

    def write(data):
        (tmp_path / "fuzz.extxyz").write_bytes(data)
        return tmp_path / "fuzz.extxyz"

    fuzz("fuzz-xyz-bytes", report, corrupted(good), write, DT_OPTIONS)


# ---- faults: real processes, killed ------------------------------------------------------------------------------
def launch(cwd: Path, *argv: str) -> subprocess.Popen:
    """`python <argv>` in its own process, tests/ importable (for helpers.KillWhileSaving), one thread."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    log = open(cwd / f"process-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], bool], processes: list[subprocess.Popen], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in processes), "a process ended before the moment to kill it"
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.02)


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]


SIGNALLED_RUN = ["--trainer.max_epochs", "8", "--trainer.limit_train_batches", "20", "--test_after_fit", "false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The last checkpoint of the signalled runs' twin, left to finish (trained once for both signals)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert asteroid(["fit", *tiny_args(folder, name="straight"), *SIGNALLED_RUN]) == 0
    return torch.load(folder / "runs/straight/version_0/checkpoints/last.ckpt", weights_only=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_fit_exits_non_zero_and_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, report, signum, uninterrupted
):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, name="stopped") + SIGNALLED_RUN
    run = launch(tmp_path, "-m", "asteroid.cli", "fit", *args)
    last = tmp_path / "runs/stopped/version_0/checkpoints/last.ckpt"
    wait_for(last.is_file, [run])
    first = step_of(last)
    time.sleep(1.0)  # into the next epoch
    run.send_signal(signum)
    status = run.wait(timeout=120)
    log = "".join(path.read_text() for path in tmp_path.glob("process-*.log"))
    assert status == 128 + signum, log  # never 0, as if it had finished
    stopped_at = step_of(last)
    assert first <= stopped_at < 160 and f"at step {stopped_at}: saved" in log, log  # saved where it stood
    assert asteroid(["fit", *args, "--ckpt_path", "last"]) == 0
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == uninterrupted["global_step"] == 160
    for key, value in uninterrupted["state_dict"].items():  # bit for bit: the same batches, rotations and noise
        assert torch.equal(resumed["state_dict"][key], value), key
    if signum == signal.SIGTERM:
        report.record(
            "fit-sigterm",
            f"SIGTERM at step {stopped_at} (epoch {stopped_at // 20}, batch "
            f"{stopped_at % 20} of 20): last.ckpt saved there, exit status {status}; SIGINT "
            "the same with exit status 130; `--ckpt_path last` went on to step 160 with "
            "weights equal bit for bit to an uninterrupted run's",
        )


def test_two_fits_at_once_then_killed_and_resumed(tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, name="twin") + [
        "--trainer.max_epochs",
        "1000",
        "--trainer.limit_train_batches",
        "20",
        "--test_after_fit",
        "false",
    ]
    runs = [launch(tmp_path, "-m", "asteroid.cli", "fit", *args) for _ in range(2)]
    version = [tmp_path / f"runs/twin/version_{n}" for n in range(2)]
    last = [v / "checkpoints/last.ckpt" for v in version]
    try:
        wait_for(lambda: all(path.is_file() for path in last), runs)
        refused = isolated(asteroid, ["fit", *args, "--ckpt_path", "last"], timeout=120)
    finally:
        for run in runs:
            run.send_signal(signal.SIGKILL)
            run.wait()
    assert sorted(p.name for p in (tmp_path / "runs/twin").iterdir()) == ["version_0", "version_1"]
    assert all((v / "config.yaml").is_file() and list(v.glob("events.out.tfevents.*")) for v in version)
    # both load: neither was left half-written. How far each got by the kill depends on timing, so the report
    # states the bound (the first checkpoint, at the end of a 20-batch epoch), and docs/reliability.md stays put.
    assert all(step_of(path) >= 20 for path in last)
    report.record(
        "fit-two-at-once",
        "each got its own directory, version_0 and version_1, with its own logs, "
        "config.yaml and checkpoints (each last.ckpt whole, at step 20 or later, when "
        "killed)",
    )
    report.record("fit-resume-while-running", describe(refused))
    check_refused(refused, r"runs/twin/version_1: another process is still writing this run", only_line=False)

    epoch = torch.load(last[1], weights_only=True)["epoch"]
    untouched = last[0].read_bytes()
    assert asteroid(["fit", *args, "--ckpt_path", "last", "--trainer.max_epochs", str(epoch + 2)]) == 0
    assert sorted(p.name for p in (tmp_path / "runs/twin").iterdir()) == ["version_0", "version_1"]
    assert step_of(last[1]) == (epoch + 2) * 20 and last[0].read_bytes() == untouched
    report.record(
        "fit-kill-mid-epoch",
        f"both last.ckpt load after the kill; `--ckpt_path last` went on in "
        f"version_1 from the end of epoch {epoch} to step {(epoch + 2) * 20} "
        f"(--trainer.max_epochs {epoch + 2}); version_0 unchanged",
    )


def test_kill_while_saving_a_checkpoint_then_resume(tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, name="cut") + ["--trainer.max_epochs", "2", "--test_after_fit", "false"]
    killer = json.dumps({"class_path": "helpers.KillWhileSaving", "init_args": {"nth": 2}})
    run = launch(tmp_path, "-m", "asteroid.cli", "fit", *args, "--trainer.plugins", killer)
    assert run.wait(timeout=300) == -signal.SIGKILL
    checkpoints = tmp_path / "runs/cut/version_0/checkpoints"
    half_written = list(checkpoints.glob(".last.ckpt.*.tmp"))
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0  # it died in the middle of the write
    remnant, kept = half_written[0].stat().st_size, step_of(checkpoints / "last.ckpt")
    assert kept == 5  # the previous checkpoint, whole: end of epoch 0 (5 batches)

    assert asteroid(["fit", *args, "--ckpt_path", "last"]) == 0
    assert step_of(checkpoints / "last.ckpt") == 10 and not list(checkpoints.glob(".*.tmp"))
    report.record(
        "fit-kill-while-saving",
        f"killed with {remnant} bytes of the new "
        f"last.ckpt in a temporary file; last.ckpt stayed the whole one of step "
        f"{kept}; `--ckpt_path last` removed the remnant, resumed and finished at "
        "step 10",
    )


SIMULATION = dict(molecule="ethanol", frames=400, thermalize_steps=40, checkpoint_every=25, seed=0)


def test_a_signalled_rollout_exits_non_zero_in_one_line_and_leaves_nothing(api_model, tmp_path, report):
    """As `fit` does: stop, remove what was being written (no hidden temporary either), say so, exit 128 + signal."""
    checkpoint = api_model[3]
    endings = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        out = tmp_path / signum.name / "pred.xyz"
        child = subprocess.Popen(
            [sys.executable, "-m", "asteroid.cli", "rollout", "--ckpt_path", str(checkpoint), "--frames", "100000",
             "--out", str(out)],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, bufsize=0,
        )  # fmt: skip
        seen = ""
        while "frame/s]" not in seen:  # the progress bar has moved: the rollout is under way
            seen += child.stderr.read(1)
            assert seen or child.poll() is None, "the rollout ended before it began"
        child.send_signal(signum)
        _, rest = child.communicate(timeout=60)
        lines = (seen + rest).strip().splitlines()
        # the frames wait in an unnamed scratch file, which the system removes even after SIGKILL
        assert not out.parent.exists() or list(out.parent.iterdir()) == []
        if signum == signal.SIGKILL:
            assert child.returncode == -signum
            endings.append("SIGKILL: killed, nothing left (not even the frames' scratch file)")
            continue
        assert child.returncode == 128 + signum, lines
        assert lines[-1].startswith(f"asteroid: stopped by {signum.name}"), lines
        endings.append(f"{signum.name}: exit {child.returncode}, `{lines[-1]}`, nothing left")
    report.record("rollout-sigterm", "; ".join(endings))


def test_kill_simulate_then_resume_loses_and_repeats_no_frame(tmp_path, report):
    out = tmp_path / "killed.npz"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SIMULATION.items()]
    run = launch(
        tmp_path,
        "-c",
        "import sys; from asteroid.cli import main; sys.exit(main(sys.argv[1:]))",
        "simulate",
        *flags,
        "--no-progress",
        f"--out={out}",
    )
    partial = checkpoint_path(out)

    def frames_saved() -> int:
        if not partial.is_file():
            return 0
        with np.load(partial) as data:  # written atomically: always a whole file
            return len(data["R"])

    try:
        wait_for(lambda: frames_saved() >= 60, [run])
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    saved = frames_saved()
    assert not out.exists() and saved < SIMULATION["frames"]  # it died mid-run

    simulate(out, **SIMULATION, resume=True, progress=False)
    simulate(tmp_path / "straight.npz", **SIMULATION, progress=False)
    with np.load(out) as resumed, np.load(tmp_path / "straight.npz") as straight:
        assert resumed["R"].shape == straight["R"].shape == (400, 9, 3)
        for key in ("R", "E", "F"):
            np.testing.assert_array_equal(resumed[key], straight[key])
    report.record(
        "simulate-kill",
        f"killed with {saved} of 400 frames in its checkpoint; the resumed run's 400 "
        "frames (positions, energies, forces) equal an uninterrupted run's bit for bit",
    )


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of the given size: writes beyond it fail with the system's own ENOSPC (needs root; skipped without)."""
    mounted = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk_{kib}k"
        folder.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def asteroid_process(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    """`asteroid ARGS` in a process of its own (one thread), its output captured: the disk fills in the child."""
    return subprocess.run(
        [sys.executable, "-m", "asteroid.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


@pytest.mark.parametrize("where", ["cache", "checkpoint"])
def test_fit_onto_a_full_disk_exits_with_one_line_and_leaves_no_partial_file(tmp_path, small_disk, report, where):
    args = tiny_args(tmp_path, name="full")
    if where == "cache":
        disk = small_disk(64)
        args += ["--data.cache_dir", str(disk / "cache")]
        cwd = tmp_path
    else:
        disk = cwd = small_disk(256)
    run = asteroid_process(["fit", *args], cwd=cwd)
    errors = [line for line in run.stderr.splitlines() if line.startswith("asteroid: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(errors) == 1 and errors[0].endswith(
        "the disk is full; nothing was written (free space and run again)"
    ), run.stderr
    left = files_under(disk)
    if where == "cache":
        assert left == [], left  # no coordinates without the record that vouches for them
    else:
        assert not any(name.endswith((".ckpt", ".tmp")) for name in left), left
    report.record(
        f"disk-full-{where}",
        f"exit status 2, `{errors[0].split(': ', 1)[1]}`; left on the disk: "
        f"{', '.join(Path(n).name for n in left) or 'nothing'}",
    )


def test_simulate_onto_a_full_disk_exits_with_one_line_and_leaves_nothing(small_disk, report):
    disk = small_disk(16)
    out = disk / "ethanol.npz"
    run = asteroid_process(
        ["simulate", "--molecule", "ethanol", "--frames", "100", "--thermalize-steps", "0", "--out", str(out)]
        + ["--no-progress"]
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"asteroid: error: {out}: the disk is full; nothing was written (free space and run again)"
    ]
    assert files_under(disk) == []
    report.record("disk-full-simulate", "exit status 2, `the disk is full; nothing was written`; nothing left")


def test_rollout_onto_a_full_disk_exits_with_one_line_and_leaves_nothing(tmp_path, monkeypatch, small_disk, report):
    monkeypatch.chdir(tmp_path)
    assert (
        asteroid(["fit", *tiny_args(tmp_path, name="small"), "--trainer.max_epochs", "1", "--test_after_fit", "false"])
        == 0
    )
    disk = small_disk(16)
    out = disk / "pred.xyz"
    run = asteroid_process(
        ["rollout", "--ckpt_path", "last", "--name", "small", "--frames", "200", "--out", str(out), "--no-progress"],
        cwd=tmp_path,
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("asteroid: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert len(errors) == 1 and "x --frames 200 of 9 atoms need about 135 kB of disk while written" in errors[0]
    assert errors[0].endswith("kB free: ask for fewer frames or samples, or another --out place"), errors
    assert files_under(disk) == []
    report.record("disk-full-rollout", f"refused before the work, exit status 2, `{errors[0][17:]}`; nothing left")
