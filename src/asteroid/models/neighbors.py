"""Radius neighbourhood graphs over a batch of frames."""

import torch
from torch import Tensor


def radius_neighbors(pos: Tensor, mask: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """All ordered pairs of real atoms of the same frame closer than ``cutoff``.

    pos (M, N, 3), mask (M, N) bool -> edge_index (2, E) into the flattened M*N nodes
    (row 0 = source j, row 1 = target i, torch_geometric's convention) and distance (E,).
    No self loops; padded atoms (mask False) have no edges.
    Dense O(M N^2): fine for molecules, a cell list will replace it for large systems.
    """
    M, N, _ = pos.shape
    with torch.no_grad():
        pair_distance = (pos[:, :, None, :] - pos[:, None, :, :]).norm(dim=-1)  # (M, N, N)
        adjacency = (pair_distance < cutoff) & mask[:, :, None] & mask[:, None, :]
        adjacency &= ~torch.eye(N, dtype=torch.bool, device=pos.device)
        frame, target, source = adjacency.nonzero(as_tuple=True)
    # Recomputed on the edges only, so gradients never meet the zero-distance diagonal.
    distance = (pos[frame, target] - pos[frame, source]).norm(dim=-1)  # (E,)
    edge_index = torch.stack([frame * N + source, frame * N + target])
    return edge_index, distance
