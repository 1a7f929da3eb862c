"""Polynomial extrapolation of the last history frames: the forecasts any learned model must beat."""
import numpy as np
import torch
from torch import Tensor


def extrapolate(history: Tensor, history_offsets, target_offsets, order: int) -> Tensor:
    """Fit a polynomial of `order` in time through the last order+1 history frames and evaluate it at the targets.

    history (B, H, N, 3); offsets are frame numbers within the window (they may be irregular, as in the peers'
    protocols). order 0 repeats the last frame, 1 continues the last velocity, 2 the last acceleration.
    Returns (B, P, N, 3).
    """
    if order + 1 > history.shape[1]:
        raise ValueError(f"order {order} extrapolation needs {order + 1} history frames, got {history.shape[1]}")
    times = np.asarray(history_offsets[-(order + 1):], dtype=np.float64)
    targets = np.asarray(target_offsets, dtype=np.float64)
    # Lagrange weights: prediction at each target time is a fixed combination of the fitted frames.
    weights = np.ones((len(targets), order + 1))
    for j in range(order + 1):
        for m in range(order + 1):
            if m != j:
                weights[:, j] *= (targets - times[m]) / (times[j] - times[m])
    weights = torch.as_tensor(weights, dtype=history.dtype, device=history.device)  # (P, order+1)
    return torch.einsum("pj,bjnc->bpnc", weights, history[:, -(order + 1):])
