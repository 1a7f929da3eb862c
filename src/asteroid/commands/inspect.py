"""`asteroid inspect FILE`: what a trajectory file holds and whether it can be forecast."""

from __future__ import annotations

from asteroid.arguments import CommandParser
from asteroid.data.summary import format_summary, summarize


def main(argv: list[str]) -> int:
    """Entry point of `asteroid inspect`."""
    parser = CommandParser(prog="asteroid inspect", description=__doc__)
    parser.add_argument("file", help="trajectory file (.npz, .extxyz, .xyz, .traj, .dcd, .xtc, .trr, .nc, .h5, .pdb)")
    parser.add_argument("--topology", help="topology for coordinate-only formats (.pdb, .psf, .gro, .prmtop)")
    parser.add_argument("--selection", help="mdtraj atom selection, e.g. 'not element H'")
    parser.add_argument("--dt-fs", type=float, help="time between frames in fs, when the file does not say")
    args = parser.parse_args(argv)
    summary = summarize(args.file, topology=args.topology, selection=args.selection, dt_fs=args.dt_fs)
    print(format_summary(summary))
    return 0
