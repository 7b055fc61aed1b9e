"""Sampling from a trained generator: images by seed, grids, and latent walks (GIF, or MP4 when an encoder is
installed). Image ``k`` comes from seed ``k`` alone - whatever the batch size - because every latent is drawn
from its own seed (:func:`scs_gan.latents.latents_for_seeds`) and the generator runs in eval mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserError
from .images import grid_array, save_png, to_pil, to_uint8
from .io import atomic_write
from .latents import latents_for_seeds

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_seeds(text: str) -> list[int]:
    """``"0-63"``, ``"3,14,15"`` or a mix (``"0-3,10"``) to a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.match(part)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if stop < start:
                raise UserError(f"seed range {part!r} runs backwards")
            seeds.extend(range(start, stop + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise UserError(f"seeds must look like 0-63 or 3,14,15, got {text!r}")
    if not seeds:
        raise UserError("no seeds given")
    return seeds


def parse_grid(text: str | None, count: int) -> tuple[int, int]:
    """``"8x8"`` to (rows, columns); None picks a near-square grid for ``count`` images."""
    if text is None:
        columns = max(1, math.ceil(math.sqrt(count)))
        return math.ceil(count / columns), columns
    match = re.match(r"^(\d+)x(\d+)$", text.strip())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise UserError(f"--grid must look like 8x8 (rows x columns), got {text!r}")
    rows, columns = int(match.group(1)), int(match.group(2))
    if rows * columns < count:
        raise UserError(f"a {rows}x{columns} grid holds {rows * columns} images, but {count} seeds were given")
    return rows, columns


def _device_of(generator: nn.Module) -> torch.device:
    return next(generator.parameters()).device


@torch.no_grad()
def generate(generator: nn.Module, latents: Tensor, batch: int = 64) -> Tensor:
    """uint8 images ``(N, C, H, W)`` for float latents ``(N, z_dim)``, computed ``batch`` at a time."""
    generator.eval()
    device = _device_of(generator)
    out = [to_uint8(generator(chunk.to(device))).cpu() for chunk in latents.split(max(1, batch))]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)


def seed_latents(seeds: Sequence[int], z_dim: int, trunc: float = 1.0) -> Tensor:
    """Latents of ``seeds``, truncated towards the mean (zero) by ``trunc`` (1 = none, 0 = the mean)."""
    if not 0.0 <= trunc <= 1.0:
        raise UserError(f"--trunc must be between 0 and 1, got {trunc}")
    return latents_for_seeds(seeds, z_dim) * trunc


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (falls back to linear when they are parallel)."""
    a_unit, b_unit = a / a.norm(), b / b.norm()
    omega = torch.acos((a_unit * b_unit).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def walk_latents(seeds: Sequence[int], z_dim: int, frames: int, trunc: float = 1.0, loop: bool = False) -> Tensor:
    """``frames`` latents per segment between consecutive seeds (and back to the first with ``loop``)."""
    if len(seeds) < 2:
        raise UserError("an interpolation needs at least two seeds, e.g. --seeds 3,14,15")
    if frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}")
    keys = seed_latents(seeds, z_dim, trunc)
    if loop:
        keys = torch.cat([keys, keys[:1]])
    out = []
    for i in range(len(keys) - 1):
        for f in range(frames):
            out.append(slerp(keys[i], keys[i + 1], f / frames))
    if not loop:
        out.append(keys[-1])
    return torch.stack(out)


def save_grid(images: Tensor, path: Path, grid: str | None = None) -> None:
    """uint8 images tiled into a grid PNG."""
    rows, columns = parse_grid(grid, len(images))
    save_png(grid_array(images, columns, rows), path)


def save_per_seed(images: Tensor, seeds: Sequence[int], outdir: Path) -> list[Path]:
    """One PNG per image, named by its seed (``seed0042.png``)."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, image in zip(seeds, images, strict=True):
        path = outdir / f"seed{seed:04d}.png"
        save_png(image.permute(1, 2, 0).numpy(), path)
        paths.append(path)
    return paths


def save_animation(frames: list[np.ndarray], path: Path, fps: float = 15.0) -> None:
    """Write frames (uint8 ``(H, W, C)``) as a looping GIF, or as MP4 when the suffix asks for it."""
    if path.suffix.lower() == ".mp4":
        try:
            import imageio.v2 as imageio
        except ImportError:
            raise UserError(
                "writing MP4 needs an encoder: pip install imageio imageio-ffmpeg (or write a .gif)"
            ) from None
        rgb = [f if f.shape[2] == 3 else np.repeat(f, 3, axis=2) for f in frames]
        try:
            atomic_write(path, lambda tmp: imageio.mimwrite(tmp, rgb, fps=fps, format="FFMPEG"))
        except Exception as error:  # the encoder is missing or refused the frames
            raise UserError(f"could not write {path} ({error}); pip install imageio-ffmpeg, or write a .gif") from None
        return
    if path.suffix.lower() != ".gif":
        raise UserError(f"--out must end in .gif or .mp4, got {path.name!r}")
    images = [to_pil(f) for f in frames]
    duration = max(20, round(1000 / fps))
    atomic_write(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False
        ),
    )
