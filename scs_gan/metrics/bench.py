"""Inception feature-extraction benchmark: images/s of the FID/KID feature pass, with the settings the
evaluator uses (channels_last, small CPU batches, batch norms folded into the convolutions) against
torchmetrics' defaults, and the largest difference between their features (float noise only)."""

from __future__ import annotations

import time

import torch

from .inception import InceptionFeatures
from .weights import resolve_fid_weights


def run(device: str = "cpu", images: int = 64, resolution: int = 32) -> list[str]:
    """Measure and return the result lines."""
    state, source = resolve_fid_weights()
    dev = torch.device(device)
    x = torch.randint(0, 256, (images, 3, resolution, resolution), dtype=torch.uint8)
    lines = [
        f"Inception features (2048-d) on {dev}, {torch.get_num_threads()} threads, {images} images of "
        f"{resolution}x{resolution} (resized to 299); weights: {source}"
    ]
    reference = None
    small = 8 if dev.type == "cpu" else 128
    settings = [
        ("torchmetrics default (NCHW, batch 64)", False, 64, False),
        (f"channels_last, batch {small}", True, small, False),
    ]
    batches = (8, 16, 32) if dev.type == "cpu" else (64, 128, 256)
    settings += [(f"channels_last, batch {b}, BN folded", True, b, True) for b in batches]
    for label, channels_last, batch, fold in settings:
        extractor = InceptionFeatures(state, batch=batch, fold=fold).to(dev)
        if channels_last:
            extractor.net.to(memory_format=torch.channels_last)
        extractor(x[:batch])  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        features = extractor(x).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
        if reference is None:
            reference = features
        diff = (features - reference).abs().max().item()
        lines.append(f"{label:<44} {rate:8.1f} images/s   max |feature difference| {diff:.1e}")
    return lines
