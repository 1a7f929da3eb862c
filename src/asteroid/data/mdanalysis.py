"""Real protein trajectories by name, from the MDAnalysisTests package on PyPI: fetched once, checked, kept in data/.

MDAnalysisTests ships only a source archive (about 60 MB); `pip download` fetches it (through the user's own pip
configuration: index, proxy, certificates), and only the named trajectory and its topology are extracted and
checked against their SHA-256 before they appear under data/mdanalysis/.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from asteroid.errors import DataError
from asteroid.fileio import atomic_output

PACKAGE = "MDAnalysisTests==2.11.0"
SUBDIR = "mdanalysis"  # under the data root


@dataclass(frozen=True)
class ProteinDataset:
    """A trajectory and its topology inside MDAnalysisTests/data, their SHA-256, and the frame spacing."""

    name: str
    trajectory: str
    trajectory_sha256: str
    topology: str
    topology_sha256: str
    dt_fs: float
    description: str


PROTEIN_DATASETS = {
    d.name: d
    for d in (
        # The DCD header: a frame every 10 steps of 1 fs (NSAVC 10, DELTA 0.0204548 AKMA time units).
        ProteinDataset(
            "mdanalysis:adk_tmd",
            "adk_gbis_tmd-fast1_NAMD.dcd",
            "bd6dbe3fb419f15cc619d806f723675a676a3511252943e7bdbf7284787939ef",
            "adk_closed_NAMD.psf",
            "308a3776cbe2e55622d41042055c401c9d5f872829389b4632475acd244b1bee",
            dt_fs=10.0,
            description="adenylate kinase (AdK, 214 residues, 3341 atoms), NAMD targeted MD from the closed "
            "towards the open state in GBIS implicit solvent: 100 frames 10 fs apart",
        ),
    )
}


def protein_files(name: str, root: str | Path = "data") -> tuple[Path, Path]:
    """Where dataset `name`'s trajectory and topology live under `root` (present or not)."""
    dataset = PROTEIN_DATASETS[name.lower()]
    folder = Path(root) / SUBDIR
    return folder / dataset.trajectory, folder / dataset.topology


def fetch_protein_dataset(name: str, root: str | Path = "data") -> tuple[Path, Path]:
    """The trajectory and topology files of dataset `name`, downloaded and extracted when either is missing.

    DataError when they cannot be had (offline, pip failing, a file that does not match its checksum), saying
    how to put them in place by hand.
    """
    dataset = PROTEIN_DATASETS[name.lower()]
    trajectory, topology = protein_files(name, root)
    if trajectory.is_file() and topology.is_file():
        return trajectory, topology
    by_hand = (
        f"on a machine with network, `pip download {PACKAGE} --no-deps` and copy {dataset.trajectory} and "
        f"{dataset.topology} from the archive's MDAnalysisTests/data/ into {trajectory.parent}/"
    )
    print(
        f"asteroid: {dataset.name}: fetching {PACKAGE} from PyPI (about 60 MB) for {dataset.trajectory}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as directory:
        archive = download_package(Path(directory), by_hand)
        for member, sha256, target in (
            (dataset.trajectory, dataset.trajectory_sha256, trajectory),
            (dataset.topology, dataset.topology_sha256, topology),
        ):
            extract_checked(archive, member, sha256, target, by_hand)
    return trajectory, topology


def download_package(directory: Path, by_hand: str) -> Path:
    """`pip download` the MDAnalysisTests archive into `directory`; its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        PACKAGE,
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(directory),
        "--quiet",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise DataError(f"{PACKAGE}: the download did not finish in 30 minutes; {by_hand}") from None
    archives = sorted(directory.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        reason = (done.stderr.strip().splitlines() or ["no archive"])[-1]
        raise DataError(f"{PACKAGE}: cannot download it from PyPI (pip: {reason}); {by_hand}")
    return archives[0]


def extract_checked(archive: Path, member: str, sha256: str, target: Path, by_hand: str) -> None:
    """Copy MDAnalysisTests/data/`member` out of `archive` to `target`, only if its SHA-256 is `sha256`."""
    with tarfile.open(archive) as tar:
        found = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(f"/MDAnalysisTests/data/{member}")]
        if not found:
            raise DataError(f"{archive.name}: no MDAnalysisTests/data/{member} in the archive; {by_hand}")
        with atomic_output(target) as out:
            digest = hashlib.sha256()
            source = tar.extractfile(found[0])
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != sha256:
                raise DataError(
                    f"{archive.name}: {member} does not match its SHA-256 (got {digest.hexdigest()}); "
                    f"nothing was written; {by_hand}"
                )
