"""Loader benchmark: images/s of the data pipeline alone, for the embedded set and a folder of PNG files."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .dataset import DataConfig
from .loader import InfiniteLoader, to_float
from .sources import build_dataset


@contextlib.contextmanager
def _cache_in(path: Path) -> Iterator[None]:
    previous = os.environ.get("SCS_GAN_CACHE")
    os.environ["SCS_GAN_CACHE"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SCS_GAN_CACHE"]
        else:
            os.environ["SCS_GAN_CACHE"] = previous


def _loader_rate(loader: InfiniteLoader, seconds: float) -> float:
    next(loader)  # start workers
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = to_float(next(loader))
        count += len(batch)
    return count / (time.perf_counter() - start)


def write_pngs(folder: Path, count: int, resolution: int) -> None:
    """``count`` PNG files of procedural RGB images (the synthetic source), in 10 subfolders."""
    images = build_dataset(DataConfig(name="synthetic", count=count, resolution=resolution, channels=3)).images
    for i, image in enumerate(images):
        sub = folder / f"part{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(sub / f"{i:06d}.png")


def run(
    count: int = 10_000, resolution: int = 32, batch: int = 64, workers: int = 2, seconds: float = 3.0
) -> list[str]:
    """Measure and return the result lines (a bar on stderr says which of its six phases is running)."""
    lines = [f"data pipeline benchmark: batch {batch}, {workers} workers, {torch.get_num_threads()} threads"]
    with tqdm(total=6, desc="data pipeline benchmark", unit="phase", file=sys.stderr) as bar:
        bar.set_postfix_str("loading mnist5k twice")
        start = time.perf_counter()
        mnist = build_dataset(DataConfig())
        first = time.perf_counter() - start
        start = time.perf_counter()
        build_dataset(DataConfig())
        again = time.perf_counter() - start
        bar.update()
        bar.set_postfix_str("mnist5k loader")
        rate = _loader_rate(InfiniteLoader(mnist, batch, seed=0), seconds)
        lines.append(f"mnist5k: load {first:.2f} s (again {again:.2f} s); loader {rate:,.0f} images/s")
        bar.update()
        with tempfile.TemporaryDirectory() as tmp, _cache_in(Path(tmp) / "cache"):
            folder = Path(tmp) / "pngs"
            bar.set_postfix_str(f"writing {count:,} PNGs")
            start = time.perf_counter()
            write_pngs(folder, count, resolution)
            lines.append(
                f"folder: wrote {count:,} PNGs ({resolution}x{resolution} RGB) in {time.perf_counter() - start:.1f} s"
            )
            bar.update()
            bar.set_postfix_str("decoding the folder, then reloading it from the cache")
            config = DataConfig(name="folder", path=str(folder), resolution=resolution, channels=3, workers=workers)
            start = time.perf_counter()
            decoded = build_dataset(config)
            decode = time.perf_counter() - start
            start = time.perf_counter()
            build_dataset(config)
            cached = time.perf_counter() - start
            bar.update()
            bar.set_postfix_str("in-memory folder loader")
            rate = _loader_rate(InfiniteLoader(decoded, batch, seed=0), seconds)
            lines.append(
                f"folder, in memory: first decode {count / decode:,.0f} images/s ({decode:.1f} s), cached reload "
                f"{cached:.2f} s; loader {rate:,.0f} images/s"
            )
            bar.update()
            bar.set_postfix_str(f"streamed folder loader, {workers} workers")
            streamed = build_dataset(DataConfig(**{**config.__dict__, "in_memory_mb": 0}))
            rate = _loader_rate(InfiniteLoader(streamed, batch, seed=0, workers=workers), seconds)
            lines.append(f"folder, streamed (decoded by {workers} workers every epoch): loader {rate:,.0f} images/s")
            bar.update()
    return lines
