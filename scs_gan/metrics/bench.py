"""Scoring benchmark: images/s of the FID/KID feature pass, with the settings the evaluator uses
(channels_last, small CPU batches, batch norms folded into the convolutions) against torchmetrics' defaults,
and the largest difference between their features (float noise only); then the time of FID and KID of
1,000 against 1,000 features as torchmetrics computes them and as the evaluator does, side by side."""

from __future__ import annotations

import sys
import time

import torch
from tqdm.auto import tqdm

from .frechet import frechet_distance
from .inception import InceptionFeatures, make_fid, make_kid
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
    for label, channels_last, batch, fold in tqdm(
        settings, desc=f"timing the Inception feature pass on {images} images", unit="setting", file=sys.stderr
    ):
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
    return lines + score_lines()


def _timed(compute):
    start = time.perf_counter()
    value = compute()
    return value, time.perf_counter() - start


def score_lines(count: int = 1000, feature: int = 2048) -> list[str]:
    """FID and KID of ``count`` against ``count`` features (fid1k_1k, kid1k_1k): torchmetrics' computation
    against the evaluator's, timed one after the other on the same features, with the values' difference.

    The features are non-negative, of low intrinsic rank plus noise (like Inception pool features); only the
    set sizes matter to the time.
    """
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(64, feature, generator=generator)

    def features(scale: float) -> torch.Tensor:
        signal = (scale * torch.randn(count, 64, generator=generator) @ basis).relu()
        return signal + 0.1 * torch.rand(count, feature, generator=generator)

    real, fake = features(1.0), features(1.2)

    def torchmetrics_fid() -> float:
        metric = make_fid(feature, sync=False)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        return float(metric.compute())

    def kid(subsets: int) -> float:
        metric = make_kid(feature, subset_size=count, subsets=subsets)
        metric.sync_on_compute = False
        metric.update(real, real=True)
        metric.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return float(metric.compute()[0])

    computations = {
        "fid_torchmetrics": torchmetrics_fid,
        "fid": lambda: frechet_distance(real, fake),
        "kid_100": lambda: kid(100),
        "kid_1": lambda: kid(1),
    }
    timed = {
        name: _timed(compute)
        for name, compute in tqdm(
            computations.items(), desc="timing FID and KID both ways", unit="computation", file=sys.stderr
        )
    }
    (slow, slow_s), (fast, fast_s) = timed["fid_torchmetrics"], timed["fid"]
    (kid_slow, kid_slow_s), (kid_fast, kid_fast_s) = timed["kid_100"], timed["kid_1"]
    n = f"{count:,} vs {count:,}"
    return [
        f"FID of {n} features: torchmetrics (2048x2048 eigvals) {slow_s:6.2f} s, exact low-rank {fast_s:6.2f} s "
        f"({slow_s / fast_s:.1f}x); values {slow:.4f} and {fast:.4f}",
        f"KID of {n} features (every subset both whole sets): 100 subsets {kid_slow_s:6.2f} s, one {kid_fast_s:6.2f} s "
        f"({kid_slow_s / kid_fast_s:.1f}x); values {kid_slow:.6f} and {kid_fast:.6f}",
    ]
