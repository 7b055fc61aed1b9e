"""What a tick records besides the losses: the SCS exponents and norm floors, and peak memory."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import scs_layers

try:
    import resource
except ImportError:  # Windows has no getrusage
    resource = None  # type: ignore[assignment]


def layer_stats(modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Mean/min/max of p and q for every SCS layer (p only where it sharpens): the signature of sharpening."""
    stats: dict[str, Any] = {"p": {}, "q": {}}
    for net, module in modules.items():
        for name, layer in scs_layers(module).items():
            key = f"{net}.{name}"
            with torch.no_grad():
                p, q = layer.p.float(), layer.q.float()
            if layer.sharpen:
                stats["p"][key] = {"mean": p.mean().item(), "min": p.min().item(), "max": p.max().item()}
            stats["q"][key] = {"mean": q.item(), "min": q.item(), "max": q.item()}
    return stats


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: allocated tensors on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if resource is None:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
