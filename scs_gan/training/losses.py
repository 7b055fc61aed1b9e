"""GAN losses on discriminator logits: non-saturating logistic (default) and hinge; the lazy R1 penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss (mean over the batch)."""
    if kind == "logistic":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """Generator loss (mean over the batch): non-saturating logistic, or hinge's ``-D(G(z))``."""
    if kind == "logistic":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def r1_penalty(real_logits: Tensor, reals: Tensor, scale: float = 1.0) -> Tensor:
    """Mean squared norm of ``d logits / d reals`` per image (differentiable, for the D step).

    ``scale`` multiplies the logits before differentiating and divides the gradient after: pass the fp16
    gradient scaler's scale so that ``autograd.grad`` neither underflows nor skips the scaler (which only
    scales ``backward``).
    """
    (grad,) = torch.autograd.grad((real_logits.float() * scale).sum(), reals, create_graph=True)
    grad = grad.float() / scale
    return grad.square().sum(dim=[1, 2, 3]).mean()


def r1_loss(
    real_logits: Tensor, reals: Tensor, gamma: float, interval: int, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The lazy R1 term to add to the D loss, and the raw penalty (for the statistics).

    R1 is ``gamma / 2 * E|grad D(x)|^2`` on reals; applied only every ``interval`` D steps (lazy
    regularisation, StyleGAN2), it is multiplied by ``interval`` so that its average weight is unchanged.
    ``scale`` is passed to :func:`r1_penalty` (the fp16 gradient scaler's scale, or 1).
    """
    penalty = r1_penalty(real_logits, reals, scale)
    return penalty * (gamma / 2) * interval, penalty
