"""Image grids and files: the one place that turns generator outputs into pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import atomic_write


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] to uint8, exactly as the data was quantised (the inverse of ``to_float``)."""
    return (images.detach().float() * 127.5 + 128).clamp_(0, 255).to(torch.uint8)


def grid_array(images: torch.Tensor, columns: int | None = None, rows: int | None = None) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` tiled into one ``(rows * H, columns * W, C)`` array (zeros where empty)."""
    images = images.cpu()
    count, channels, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = rows or max(1, math.ceil(count / columns))
    grid = torch.zeros(channels, rows * height, columns * width, dtype=torch.uint8)
    for i in range(min(count, rows * columns)):
        r, c = divmod(i, columns)
        grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = images[i]
    return grid.permute(1, 2, 0).numpy()


def image_grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """Float images in [-1, 1] ``(N, C, H, W)`` to one uint8 grid array ``(rows * H, columns * W, C)``."""
    return grid_array(to_uint8(images), columns)


def to_pil(array: np.ndarray) -> Image.Image:
    """A uint8 ``(H, W, C)`` array (C = 1 or 3) as a PIL image (grayscale or RGB)."""
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def save_png(array: np.ndarray, path: Path) -> None:
    """Save a uint8 ``(H, W, C)`` array as PNG, atomically."""
    image = to_pil(array)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_image_grid(images: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """Save a grid of float images in [-1, 1] as PNG, atomically."""
    save_png(image_grid(images, columns), path)
