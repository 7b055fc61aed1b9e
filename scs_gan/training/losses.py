"""GAN losses on discriminator logits: non-saturating logistic (default), hinge and the relativistic pairing
loss (RpGAN); the lazy R1 penalty, the LeCam regulariser and the mode-seeking term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss (mean over the batch).

    ``relativistic`` pairs real ``i`` with fake ``i``: ``softplus(D(fake_i) - D(real_i))``, so D is asked only to
    rank each real above its fake (RpGAN; both batches must have the same size).
    """
    if kind == "relativistic":
        return F.softplus(fake_logits - real_logits).mean()
    if kind == "logistic":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: Tensor, real_logits: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """Generator loss (mean over the batch): non-saturating logistic, hinge's ``-D(G(z))``, or the
    relativistic ``softplus(D(real_i) - D(fake_i))``, which needs ``real_logits`` (treated as constants).

    ``keep`` (a 0-d tensor, so that a compiled loss does not recompile as it changes): the mean is over only
    the ``keep`` fakes D scores highest (top-k training, Sinha et al. 2020), ties broken by position; the
    others contribute no gradient. ``None``: all of them.
    """
    if kind == "relativistic":
        if real_logits is None:
            raise ValueError("the relativistic G loss needs the real logits")
        per_image = F.softplus(real_logits.detach() - fake_logits)
    elif kind == "logistic":
        per_image = F.softplus(-fake_logits)
    elif kind == "hinge":
        per_image = -fake_logits
    else:
        raise ValueError(f"unknown loss {kind!r}")
    if keep is None:
        return per_image.mean()
    rank = fake_logits.detach().argsort(descending=True, stable=True).argsort()  # 0 = D's highest score
    chosen = (rank < keep).to(per_image.dtype)
    return (per_image * chosen).sum() / chosen.sum()


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


def lecam_penalty(real_logits: Tensor, fake_logits: Tensor, real_anchor: float, fake_anchor: float) -> Tensor:
    """The LeCam regulariser (Tseng et al. 2021), unweighted: ``mean(relu(D(real) - fake_anchor)^2) +
    mean(relu(real_anchor - D(fake))^2)``, with the anchors the moving averages of D's mean logits on reals
    and on fakes. It penalises only a real logit above the fakes' average and a fake logit below the reals'
    average, which bounds how far D's outputs on the two can move apart."""
    real_term = F.relu(real_logits.float() - fake_anchor).square().mean()
    return real_term + F.relu(real_anchor - fake_logits.float()).square().mean()


def mode_seeking_penalty(fakes: Tensor, z: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019) for G's loss: ``1 / (eps + r)``, with ``r`` the ratio of the
    mean absolute difference between the fakes of consecutive pairs (images 0 and 1, 2 and 3, ...) to that
    between their codes. Minimising it pushes G to map different codes to different images, which counters
    a conditional generator's tendency to ignore its code within a class."""
    images = fakes.float().flatten(1)
    codes = z.float().flatten(1)
    ratio = (images[0::2] - images[1::2]).abs().mean() / (codes[0::2] - codes[1::2]).abs().mean()
    return 1.0 / (ratio + eps)
