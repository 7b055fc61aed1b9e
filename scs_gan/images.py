"""Image grids and files: the one place that turns generator outputs into pictures."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from .errors import UserError
from .io import atomic_write

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""File suffixes :func:`save_image` writes, and the PIL format each names."""

_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}


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
    paste_tiles(grid, images[: rows * columns], 0, columns)
    return grid.permute(1, 2, 0).numpy()


def paste_tiles(grid: torch.Tensor, images: torch.Tensor, start: int, columns: int) -> None:
    """Copy uint8 images ``(N, C, H, W)`` into cells ``start, start + 1, ...`` of a ``(C, rows * H, columns * W)``
    grid, row by row, so that a grid can be built a batch at a time."""
    height, width = images.shape[-2:]
    for i, image in enumerate(images, start):
        r, c = divmod(i, columns)
        grid[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = image


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


@contextlib.contextmanager
def write_errors_as_user_errors(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (read-only directory, a directory in the way, full disk, an image too large
    for its format) into a :class:`UserError` naming the file."""
    try:
        yield
    except (OSError, ValueError) as error:  # PIL reports a failed encoder as ValueError
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UserError(f"cannot write {path} ({reason})") from None


def save_image(array: np.ndarray, path: Path) -> None:
    """Save a uint8 ``(H, W, C)`` array atomically in the format its suffix names (see ``IMAGE_FORMATS``; JPEG at
    quality 95, WebP lossless); an unknown suffix, or a failed write, is a :class:`UserError` naming the file."""
    image_format = IMAGE_FORMATS.get(path.suffix.lower())
    if image_format is None:
        raise UserError(f"{path.name!r} names no image format written here; use {', '.join(IMAGE_FORMATS)}")
    if image_format == "WEBP" and not features.check("webp"):
        raise UserError(f"this Pillow cannot write WebP, so {path} cannot be written; use .png or .jpg")
    image = to_pil(array)
    options = _SAVE_OPTIONS.get(image_format, {})
    with write_errors_as_user_errors(path):
        atomic_write(path, lambda tmp: image.save(tmp, format=image_format, **options))


def save_image_grid(images: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """Save a grid of float images in [-1, 1] as PNG, atomically."""
    save_png(image_grid(images, columns), path)
