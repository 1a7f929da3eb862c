"""Radius neighbourhood graphs over a batch of frames: dense pairwise for molecules, a cell list for large systems.

Both methods return the same pairs in the same order (frame, target atom, source atom, periodic image), so a
model gives the same output whichever builds its graph. Positions may carry gradients: the pair set is found
without them and the distances are recomputed on the edges only.
"""

import itertools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from asteroid.errors import ConfigError

# Above this many atoms per frame, "auto" uses the cell list. Measured on one CPU thread at liquid-like density
# (20 neighbours within 5 Angstrom): dense 0.40 / cell list 0.45 ms per frame at 128 atoms, 0.86 / 0.66 at 192,
# 29 / 5.1 at 1024; the dense (frames, N, N) distances also grow as N^2 in memory.
CELL_LIST_MIN_ATOMS = 128
METHODS = ("auto", "dense", "cell_list")
# The periodic images searched around the nearest one: every neighbouring cell, enough when the cutoff is at most
# the box's narrowest width (checked).
NEIGHBOUR_CELLS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.float64)  # (27, 3)


class Neighbors(NamedTuple):
    """Edges of a radius graph over the flattened M*N atoms of M frames."""

    edge_index: Tensor  # (2, E) row 0 = source j, row 1 = target i (torch_geometric's convention), sorted by target
    distance: Tensor  # (E,) Angstrom, from the target to the source's image
    image: Tensor  # (E, 3) translation from the source to that image: a sum of cell vectors; zeros without a box


def radius_neighbors(
    pos: Tensor, mask: Tensor, cutoff: float, box: Tensor | None = None, method: str = "auto"
) -> Neighbors:
    """All ordered pairs of real atoms of the same frame closer than ``cutoff``.

    pos (M, N, 3), mask (M, N) bool, box (M, 3, 3) periodic cell vectors as rows (Angstrom) or None (open
    boundaries) -> Neighbors. Under a box, every periodic image of j within the cutoff of i is an edge of its own
    (one per image, with its distance and translation); positions need not lie inside the cell, so unwrapped
    trajectories work. No self loops; padded atoms (mask False) have no edges. method: "dense" (O(M N^2), fast for
    molecules), "cell_list" (vesin, O(M N)) or "auto" (cell list above CELL_LIST_MIN_ATOMS atoms).
    """
    if method not in METHODS:
        raise ConfigError(f"neighbour method {method!r} is not one of {', '.join(METHODS)}")
    if box is not None:
        _check_box(box, cutoff)
    if method == "auto":
        method = "cell_list" if pos.shape[1] > CELL_LIST_MIN_ATOMS else "dense"
    N = pos.shape[1]
    with torch.no_grad():
        find = _dense_pairs if method == "dense" else _cell_list_pairs
        frame, target, source, shift = _sorted(*find(pos.detach(), mask, cutoff, box), N)
    # Recomputed on the edges only, so gradients never meet the zero-distance diagonal.
    image = pos.new_zeros(len(frame), 3)
    if box is not None:
        image = torch.einsum("ek,ekl->el", shift.to(pos.dtype), box[frame].to(pos.dtype))
    vector = pos[frame, source] + image - pos[frame, target]  # (E, 3)
    return Neighbors(torch.stack([frame * N + source, frame * N + target]), vector.norm(dim=-1), image)


def perpendicular_widths(box: Tensor) -> Tensor:
    """(M, 3, 3) cell vectors as rows -> (M, 3) distance between opposite faces of each cell."""
    volume = torch.linalg.det(box).abs()  # (M,)
    areas = torch.stack(
        [torch.linalg.cross(box[:, (k + 1) % 3], box[:, (k + 2) % 3]).norm(dim=-1) for k in range(3)], dim=-1
    )  # (M, 3)
    return volume[:, None] / areas


def _check_box(box: Tensor, cutoff: float) -> None:
    narrowest = float(perpendicular_widths(box.double()).min())
    if not narrowest >= cutoff:  # also catches a degenerate (flat, zero or NaN) box
        raise ConfigError(
            f"model: the cutoff of {cutoff} Angstrom exceeds the periodic box's narrowest width "
            f"({narrowest:.3g} Angstrom); a neighbour could then be its own image"
        )


def _sorted(frame: Tensor, target: Tensor, source: Tensor, shift: Tensor, N: int):
    """The pairs in (frame, target, source, cell shift) order, the order both methods return."""
    if len(frame) == 0:
        return frame, target, source, shift
    digits = shift.long() - shift.long().amin(dim=0)  # (E, 3) >= 0
    base = int(digits.max()) + 1
    image = (digits * digits.new_tensor([base * base, base, 1])).sum(dim=-1)  # (E,) one number per cell shift
    order = torch.argsort(((frame * N + target) * N + source) * base**3 + image)
    return frame[order], target[order], source[order], shift[order]


def _dense_pairs(pos: Tensor, mask: Tensor, cutoff: float, box: Tensor | None):
    """Every pair distance at once, (M, N, N), for each of the 27 nearest images under a box.

    Returns frame, target, source (E,) and the cell shift (E, 3) that takes the source to its image."""
    M, N, _ = pos.shape
    pos = pos.double()  # as vesin computes, so that both agree on pairs at the cutoff
    vector = pos[:, None, :, :] - pos[:, :, None, :]  # (M, N_target, N_source, 3): source - target
    candidate = mask[:, :, None] & mask[:, None, :]
    not_self = ~torch.eye(N, dtype=torch.bool, device=pos.device)
    if box is None:
        frame, target, source = (candidate & not_self & (vector.norm(dim=-1) < cutoff)).nonzero(as_tuple=True)
        return frame, target, source, torch.zeros(len(frame), 3, dtype=torch.float64, device=pos.device)
    box = box.double()
    # Fractional vector, and the shift to its nearest image; the neighbouring cells of that image hold every
    # image within the cutoff.
    fractional = torch.linalg.solve(box.transpose(1, 2)[:, None], vector.transpose(2, 3)).transpose(2, 3)
    nearest = -torch.round(fractional)  # (M, N, N, 3)
    found = []
    for cell in NEIGHBOUR_CELLS.to(pos.device):
        shift = nearest + cell
        distance = torch.einsum("mtsk,mkl->mtsl", fractional + shift, box).norm(dim=-1)  # (M, N, N)
        near = candidate & (distance < cutoff)
        if not cell.any():  # an atom's own image in its home cell is itself
            near &= not_self
        frame, target, source = near.nonzero(as_tuple=True)
        found.append((frame, target, source, shift[frame, target, source]))
    return tuple(torch.cat(parts) for parts in zip(*found))


def _cell_list_pairs(pos: Tensor, mask: Tensor, cutoff: float, box: Tensor | None):
    """vesin's cell list, one frame at a time over its real atoms (on the CPU, in float64)."""
    import vesin  # imported here: only large systems need it

    calculator = vesin.NeighborList(cutoff=cutoff, full_list=True)
    found = []
    for m in range(pos.shape[0]):
        atoms = mask[m].nonzero()[:, 0]
        points = pos[m, atoms].double().cpu().numpy()
        cell = np.zeros((3, 3)) if box is None else box[m].double().cpu().numpy()
        i, j, shift = calculator.compute(points, cell, periodic=box is not None, quantities="ijS")
        # vesin's pair (i, j) with shift S is the vector r_j - r_i + S @ cell: j is the source, i the target.
        target, source = (atoms[torch.from_numpy(a.astype(np.int64)).to(pos.device)] for a in (i, j))
        found.append((torch.full_like(target, m), target, source, torch.from_numpy(shift.astype(np.float64))))
    frame, target, source, shift = (torch.cat(parts) for parts in zip(*found))
    return frame, target, source, shift.to(pos.device)


class LocalGraph(NamedTuple):
    """Radius graph of a batch of frames with its distance features."""

    edge_index: Tensor  # (2, E) into the flattened M*N nodes, sorted by target node (row 1)
    rbf: Tensor  # (E, num_rbf) Gaussian expansion of the pair distance
    envelope: Tensor  # (E,) smooth cosine cutoff, 1 at distance 0 and 0 at the cutoff
    image: Tensor  # (E, 3) periodic translation of the source atom (zeros without a box), see radius_neighbors


class DenseGraph(NamedTuple):
    """The same radius graph as LocalGraph for small frames in open space, as (M, N, N) arrays over every target i
    and source j, so that attention runs as batched products instead of gathers and scatters over edges."""

    edge: Tensor  # (M, N, N) bool: j within the cutoff of i, both real, i != j
    rbf: Tensor  # (M, N, N, num_rbf)
    envelope: Tensor  # (M, N, N), zero where edge is False


class RadiusGraph(nn.Module):
    """Builds the LocalGraph of frames: neighbours within ``cutoff``, distances in Gaussian RBFs."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.width = cutoff / max(num_rbf - 1, 1)

    def forward(self, pos: Tensor, mask: Tensor, box: Tensor | None = None) -> LocalGraph:
        """pos (M, N, 3) Angstrom, mask (M, N), box (M, 3, 3) periodic cell vectors or None -> LocalGraph.

        Neighbours come from dense pair distances for molecules and from a cell list for large frames."""
        edge_index, distance, image = radius_neighbors(pos, mask, self.cutoff, box)
        return LocalGraph(edge_index, *self._features(distance), image)

    def dense(self, pos: Tensor, mask: Tensor) -> DenseGraph:
        """pos (M, N, 3) Angstrom in open space, mask (M, N) -> DenseGraph, the pairs `forward` finds."""
        N = pos.shape[1]
        with torch.no_grad():  # the pair set as radius_neighbors decides it, in float64
            near = (pos.double()[:, None] - pos.double()[:, :, None]).norm(dim=-1) < self.cutoff  # (M, N, N)
            edge = near & mask[:, :, None] & mask[:, None, :] & ~torch.eye(N, dtype=torch.bool, device=pos.device)
        # the diagonal's zero distance has no gradient: it is masked, but its norm's backward would give NaN
        vector = torch.where(edge[..., None], pos[:, None] - pos[:, :, None], 1.0)  # (M, N_target, N_source, 3)
        rbf, envelope = self._features(vector.norm(dim=-1))
        return DenseGraph(edge, rbf, envelope * edge)

    def _features(self, distance: Tensor) -> tuple[Tensor, Tensor]:
        """distance (...) Angstrom -> rbf (..., R), envelope (...)."""
        rbf = torch.exp(-0.5 * ((distance[..., None] - self.centers) / self.width) ** 2)
        envelope = 0.5 * (torch.cos(distance * math.pi / self.cutoff) + 1.0)
        return rbf, envelope * (distance < self.cutoff)
