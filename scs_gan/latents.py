"""Seed-addressable latent codes: the one function that turns seeds into latents, for training grids,
generation and metrics alike. Latent ``k`` depends on seed ``k`` only - not on the batch, the device or the
process - because each code is drawn on the CPU from its own generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def latents_for_seeds(seeds: Sequence[int], z_dim: int, device: torch.device | str | None = None) -> Tensor:
    """Standard-normal latents ``(len(seeds), z_dim)``; row ``i`` comes from ``seeds[i]`` alone."""
    rows = [torch.randn(z_dim, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    out = torch.stack(rows) if rows else torch.empty(0, z_dim)
    return out.to(device) if device is not None else out


def classes_of(z: Tensor, cdf: Tensor) -> Tensor:
    """The class each latent code asks for, int64 ``(N,)``: where the standard normal CDF of its first
    coordinate falls among the cumulative class frequencies ``cdf`` (ascending, the last entry 1).

    The first coordinate is standard normal, so its CDF is uniform on (0, 1) and class ``c`` comes out with
    probability ``cdf[c] - cdf[c - 1]``, as often as in the training set. A seed thus fixes its class too.
    """
    u = torch.special.ndtr(z[:, 0].to(torch.float64))
    return torch.searchsorted(cdf.to(u.device, torch.float64)[:-1].contiguous(), u, right=True)


def with_class(z: Tensor, cls: int | Tensor, cdf: Tensor) -> Tensor:
    """``z`` with every code moved into class ``cls`` (one class for all, or an int64 ``(N,)`` of one per
    code): the first coordinate's CDF, ``u``, becomes ``lo + u (hi - lo)`` for the class's interval
    ``[lo, hi)`` of ``cdf``; the other coordinates stay."""
    cdf = cdf.to(z.device, torch.float64)
    starts = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    index = torch.as_tensor(cls, dtype=torch.long, device=z.device)
    lo, hi = starts[index], cdf[index]
    u = torch.special.ndtr(z[:, 0].to(torch.float64))
    # kept inside the interval, with a margin for the rounding of z's dtype (the normal CDF rounds to 0 or 1
    # far out in the tails, and float32 moves a code by about 1e-7 of itself)
    inner = (lo + u * (hi - lo)).clamp(lo + (hi - lo) * 1e-6, hi - (hi - lo) * 1e-6)
    out = z.clone()
    out[:, 0] = torch.special.ndtri(inner).to(z.dtype)
    return out


def truncate(z: Tensor, psi: float, conditional: bool) -> Tensor:
    """Latents pulled towards the origin by ``psi`` (the truncation trick); a conditional generator's first
    coordinate (its class, :func:`classes_of`) is kept."""
    out = z * psi
    if conditional:
        out[:, 0] = z[:, 0]
    return out
