"""Polynomial extrapolation of the last history frames: the forecasts any learned model must beat."""

import numpy as np
import torch
from torch import Tensor

from asteroid.errors import ConfigError
from asteroid.models.base import Forecast, ForecastModel


def extrapolate(history: Tensor, history_offsets, target_offsets, order: int) -> Tensor:
    """Fit a polynomial of `order` in time through the last order+1 history frames and evaluate it at the targets.

    history (B, H, N, 3); offsets are frame numbers within the window (they may be irregular, as in the peers'
    protocols). order 0 repeats the last frame, 1 continues the last velocity, 2 the last acceleration.
    Returns (B, P, N, 3).
    """
    if order + 1 > history.shape[1]:
        raise ValueError(f"order {order} extrapolation needs {order + 1} history frames, got {history.shape[1]}")
    times = np.asarray(history_offsets[-(order + 1) :], dtype=np.float64)
    targets = np.asarray(target_offsets, dtype=np.float64)
    # Lagrange weights: prediction at each target time is a fixed combination of the fitted frames.
    weights = np.ones((len(targets), order + 1))
    for j in range(order + 1):
        for m in range(order + 1):
            if m != j:
                weights[:, j] *= (targets - times[m]) / (times[j] - times[m])
    weights = torch.as_tensor(weights, dtype=history.dtype, device=history.device)  # (P, order+1)
    return torch.einsum("pj,bjnc->bpnc", weights, history[:, -(order + 1) :])


class PolynomialExtrapolation(ForecastModel):
    """`extrapolate` of a fixed order as a forecaster, so it runs through the same module, data and metrics.

    history_offsets / target_offsets are the window's frame offsets (WindowLayout). Only the ratios of lead times
    to frame spacings matter, so for a regular layout (frames `spacing` apart, targets right after the history)
    they may be omitted: the default is that layout with unit spacing. Irregular layouts (the peers' protocols,
    e.g. gmn: history (0, 1) -> target (3000,)) must pass them. The net has no parameters: training it needs a
    ForecastModule whose configure_optimizers accepts a net without parameters; evaluation (trainer.test) works as is.
    Translation and rotation equivariant and permutation equivariant in atoms; its Forecast has no losses.
    """

    order: int  # set by each subclass

    def __init__(
        self,
        history: int,
        horizon: int,
        history_offsets: list[int] | None = None,
        target_offsets: list[int] | None = None,
    ):
        super().__init__(history, horizon)
        name = type(self).__name__
        if self.order + 1 > history:
            raise ConfigError(f"model: {name} fits the last {self.order + 1} frames but history={history}")
        history_offsets = list(range(history)) if history_offsets is None else list(history_offsets)
        target_offsets = list(range(history, history + horizon)) if target_offsets is None else list(target_offsets)
        if len(history_offsets) != history or len(target_offsets) != horizon:
            raise ConfigError(
                f"model: {name} got {len(history_offsets)} history_offsets and {len(target_offsets)} "
                f"target_offsets for history={history}, horizon={horizon}"
            )
        if np.any(np.diff(history_offsets + target_offsets) <= 0):
            raise ConfigError(
                f"model: {name} offsets must increase strictly, history then targets; got "
                f"{history_offsets} -> {target_offsets}"
            )
        self.history_offsets, self.target_offsets = history_offsets, target_offsets

    def forward(
        self,
        history: Tensor,
        z: Tensor,
        mask: Tensor,
        target: Tensor | None = None,
        sampling_prob: float = 0.0,
        box: Tensor | None = None,
    ) -> Forecast:
        """history (B, H, N, 3) Angstrom, mask (B, N) -> Forecast: pred (B, P, N, 3) Angstrom, no losses.

        A periodic box changes nothing: each atom's unwrapped path is extrapolated on its own."""
        self.check_inputs(history, z, target)
        # Padding may hold anything (even NaN); each atom is extrapolated on its own, so zeros are harmless.
        history = history.masked_fill(~mask[:, None, :, None], 0.0)
        return Forecast(extrapolate(history, self.history_offsets, self.target_offsets, self.order))


class LastFrame(PolynomialExtrapolation):
    """Constant forecast: every horizon step repeats the last history frame."""

    order = 0


class LinearExtrapolation(PolynomialExtrapolation):
    """Continues the velocity of the last two history frames."""

    order = 1


class QuadraticExtrapolation(PolynomialExtrapolation):
    """Continues the velocity and acceleration of the last three history frames."""

    order = 2
