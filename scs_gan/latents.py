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
