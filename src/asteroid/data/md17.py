"""MD17 and MD22 trajectories by name: a local file, or the official sGDML file, downloaded and checked."""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from asteroid.data.readers import MD17_DT_FS, load_trajectory
from asteroid.data.time_order import time_order_ratio, time_order_verdict
from asteroid.errors import DataError
from asteroid.fileio import atomic_output

SGDML_URL = "http://www.quantum-machine.org/gdml/data/npz"


@dataclass(frozen=True)
class KnownDataset:
    """An original (time-ordered) sGDML trajectory: its name here, its file on the sGDML server, its atom count."""

    name: str
    file: str
    n_atoms: int


# Original MD17 (not the revised rMD17, whose frames are random samples) and MD22; file names as in
# torch_geometric.datasets.MD17 and torchmd-net's MD22.
DATASETS = {
    d.name.lower(): d
    for d in (
        KnownDataset("md17:aspirin", "md17_aspirin.npz", 21),
        KnownDataset("md17:benzene", "md17_benzene2017.npz", 12),
        KnownDataset("md17:ethanol", "md17_ethanol.npz", 9),
        KnownDataset("md17:malonaldehyde", "md17_malonaldehyde.npz", 9),
        KnownDataset("md17:naphthalene", "md17_naphthalene.npz", 18),
        KnownDataset("md17:salicylic_acid", "md17_salicylic.npz", 16),
        KnownDataset("md17:toluene", "md17_toluene.npz", 15),
        KnownDataset("md17:uracil", "md17_uracil.npz", 12),
        KnownDataset("md22:Ac-Ala3-NHMe", "md22_Ac-Ala3-NHMe.npz", 42),
        KnownDataset("md22:DHA", "md22_DHA.npz", 56),
        KnownDataset("md22:stachyose", "md22_stachyose.npz", 87),
        KnownDataset("md22:AT-AT", "md22_AT-AT.npz", 60),
        KnownDataset("md22:AT-AT-CG-CG", "md22_AT-AT-CG-CG.npz", 118),
        KnownDataset("md22:buckyball-catcher", "md22_buckyball-catcher.npz", 148),
        KnownDataset("md22:dw-nanotube", "md22_dw_nanotube.npz", 370),
    )
}


def known_dataset(name: str) -> KnownDataset:
    """The dataset called `name` (case-insensitive, e.g. "md17:ethanol"); DataError listing the names otherwise."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise DataError(
            f"{name}: no such file, and not a known dataset name "
            f"(known: {', '.join(d.name for d in DATASETS.values())})"
        ) from None


def check_dataset(path: str | Path, name: str) -> None:
    """DataError unless `path` holds dataset `name`: keys R and z, the molecule's atom count, time-ordered frames."""
    known = known_dataset(name)
    traj = load_trajectory(path, dt_fs=MD17_DT_FS, check_order=False)  # the spacing plays no part in the check
    if traj.n_atoms != known.n_atoms:
        raise DataError(f"{path}: {known.name} has {known.n_atoms} atoms but the file has {traj.n_atoms}")
    ratio = time_order_ratio(traj.R)
    if time_order_verdict(ratio) is not True:
        raise DataError(
            f"{path}: the frames of {known.name} do not look time-ordered "
            f"(consecutive/random displacement ratio {ratio:.2f}); it cannot be used for forecasting"
        )


def download_dataset(name: str, target: str | Path, timeout_s: float = 60.0) -> Path:
    """Download dataset `name` from the sGDML server to `target`, check it, and only then move it in place."""
    known = known_dataset(name)
    target = Path(target)
    url = f"{SGDML_URL}/{known.file}"
    print(f"asteroid: downloading {url} -> {target}", file=sys.stderr)
    # .npz suffix so that the reader opens the partial file for the check
    with atomic_output(target, suffix=".part.npz") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise DataError(f"{url}: the server answered {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:  # no route, DNS failure, connection timeout
            raise DataError(
                f"{url}: cannot download, the machine looks offline ({exc.reason}); "
                f"download {known.file} elsewhere and pass its local path"
            ) from exc
        except OSError as exc:  # connection lost or timed out mid-transfer, disk full
            raise DataError(
                f"{url}: the download failed ({exc}); download {known.file} elsewhere and pass its local path"
            ) from exc
        out.flush()
        try:
            check_dataset(out.name, known.name)
        except DataError as exc:
            raise DataError(f"{url}: the downloaded file failed its check, deleted: {exc}") from exc
    return target


def resolve_dataset(name_or_path: str | Path, root: str | Path = "data", timeout_s: float = 60.0) -> Path:
    """A trajectory file for `name_or_path`: an existing path as is, or a known dataset under `root`.

    Known datasets ("md17:ethanol", "md22:Ac-Ala3-NHMe", ...) missing from `root` are downloaded
    from the sGDML server and checked; DataError when that is impossible (offline) or the file is wrong.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    known = known_dataset(str(name_or_path))
    target = Path(root) / known.file
    if not target.exists():
        download_dataset(known.name, target, timeout_s)
    return target
