"""Long forecasts: the model's predictions are fed back as its history, as many times as needed."""
from __future__ import annotations

import torch
from torch import Tensor

from asteroid.data.windows import WindowLayout
from asteroid.errors import ConfigError
from asteroid.models.base import ForecastModel


def rollout_spacing(layout: WindowLayout) -> int:
    """Frames between consecutive predicted frames; refuses layouts whose forecasts cannot become history.

    A rollout needs history and targets on one regular grid: frames 0, s, ..., (H-1)s in, Hs, ..., (H+P-1)s out.
    """
    offsets = layout.history_offsets + layout.target_offsets
    spacing = offsets[1] - offsets[0] if len(offsets) > 1 else 1
    if offsets[0] != 0 or any(b - a != spacing for a, b in zip(offsets, offsets[1:])):
        raise ConfigError(f"cannot roll out this window layout (history offsets {layout.history_offsets}, target "
                          f"offsets {layout.target_offsets}): history and targets must be evenly spaced, as in "
                          "the default protocol")
    return spacing


@torch.inference_mode()
def rollout(net: ForecastModel, history: Tensor, z: Tensor, mask: Tensor, n_frames: int, progress=None) -> Tensor:
    """`n_frames` frames after `history`, each forecast of P frames becoming part of the next history.

    history (B, H, N, 3) Angstrom, z (B, N), mask (B, N) -> (B, n_frames, N, 3) Angstrom.
    `progress`, if given, is called with the number of frames each forecast adds (e.g. a tqdm bar's `update`).
    """
    frames = []
    produced = 0
    while produced < n_frames:
        pred = net(history, z, mask)["pred"]  # (B, P, N, 3)
        frames.append(pred)
        history = torch.cat([history, pred], dim=1)[:, -net.history:]  # (B, H, N, 3)
        produced += pred.shape[1]
        if progress is not None:
            progress(min(pred.shape[1], n_frames - produced + pred.shape[1]))
    return torch.cat(frames, dim=1)[:, :n_frames]
