"""The exponential moving average of the generator's weights, with a half-life measured in images."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch: int, ema_kimg: float, cur_nimg: int, rampup: float | None) -> float:
    """Decay per step for a half-life of ``ema_kimg`` thousand images (shortened early by ``rampup``).

    With ramp-up, the half-life is at most ``rampup`` times the images seen so far, so the average does not
    drag the first random weights along for the whole first half-life.
    """
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    if ema_nimg <= 0:
        return 0.0
    return 0.5 ** (batch / ema_nimg)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers (batch-norm statistics) are copied."""
    ema_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)]
    torch._foreach_lerp_(ema_params, params, 1.0 - beta)  # one fused update for all parameters
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)
