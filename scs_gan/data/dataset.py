"""Image datasets as the rest of the project sees them: uint8 images of one size and channel count.

A dataset yields ``uint8`` tensors ``(C, R, R)``; the loader turns batches of them into floats in [-1, 1] on
the training device (see :mod:`scs_gan.data.loader`). Small datasets are decoded once and held as one uint8
tensor; large ones stream from their files.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import UserError

FINGERPRINT_VERSION = "scs_gan-data-v1"


@dataclass
class DataConfig:
    """Which images to train on and how to prepare them.

    Attributes:
        name: a registered source: ``mnist5k`` (embedded, offline), ``digits`` (embedded), ``mnist``,
            ``fashion_mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``celeba``, ``folder``, ``synthetic``.
        path: the image folder or zip for ``folder``; the dataset root for the torchvision sources and celeba
            (default ``<cache>/datasets``).
        resolution: output height and width in pixels.
        channels: 1 (grayscale) or 3 (RGB); other images are converted.
        split: ``train``, ``test`` or ``all`` for sources that have splits.
        download: let torchvision download missing files (needs the internet).
        hflip: random horizontal flips in the training batches (augmentation; never in statistics).
        strict: stop at the first corrupt image instead of skipping it with a warning.
        max_images: use at most this many images (a fixed, seed-independent subset spread over the set).
        count: number of images of the ``synthetic`` source.
        workers: worker processes for decoding files.
        in_memory_mb: decode datasets up to this size once into memory; stream larger ones.
    """

    name: str = "mnist5k"
    path: str | None = None
    resolution: int = 32
    channels: int = 1
    split: str = "train"
    download: bool = False
    hflip: bool = False
    strict: bool = False
    max_images: int | None = None
    count: int = 2048
    workers: int = 2
    in_memory_mb: int = 2048

    def validate(self) -> None:
        """Raise :class:`UserError` for values no source can use."""
        if self.resolution < 4 or self.resolution > 4096:
            raise UserError(f"data.resolution must be between 4 and 4096, got {self.resolution}")
        if self.channels not in (1, 3):
            raise UserError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.split not in ("train", "test", "all"):
            raise UserError(f"data.split must be train, test or all, got {self.split!r}")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"data.max_images must be at least 1, got {self.max_images}")
        if self.count < 1:
            raise UserError(f"data.count must be at least 1, got {self.count}")
        if self.workers < 0:
            raise UserError(f"data.workers must be >= 0, got {self.workers}")
        if self.in_memory_mb < 0:
            raise UserError(f"data.in_memory_mb must be >= 0, got {self.in_memory_mb}")


class ImageDataset(Dataset):
    """Images of one resolution and channel count; ``dataset[i]`` is a uint8 tensor ``(C, R, R)``.

    Attributes:
        name: the source name; description: where the images came from.
        resolution, channels: the shape every image has.
        fingerprint: a stable hash of what training sees (keys cached statistics).
        images: the whole set as one uint8 tensor ``(N, C, R, R)`` when held in memory, else ``None``.
        labels: each image's class as an int64 tensor ``(N,)`` for sources that have classes and are held in
            memory, else ``None``; the classes are ``0 .. num_classes - 1``.
        skipped: files that could not be decoded and were left out.
    """

    images: Tensor | None = None
    labels: Tensor | None = None

    def __init__(self, name: str, description: str, resolution: int, channels: int) -> None:
        self.name = name
        self.description = description
        self.resolution = resolution
        self.channels = channels
        self.skipped: list[str] = []
        self.fingerprint = ""

    def summary(self) -> dict[str, Any]:
        """Name, count, resolution, channels and fingerprint: printed at start and saved with each run."""
        return {
            "name": self.name,
            "source": self.description,
            "images": len(self),
            "resolution": self.resolution,
            "channels": self.channels,
            "fingerprint": self.fingerprint,
            "in_memory": self.images is not None,
            "classes": self.num_classes,
            "skipped_files": len(self.skipped),
        }

    @property
    def num_classes(self) -> int:
        """How many classes the labels name (0 for a dataset without labels)."""
        return 0 if self.labels is None or len(self.labels) == 0 else int(self.labels.max()) + 1

    def class_frequencies(self) -> Tensor:
        """The fraction of images in each class, float64 ``(num_classes,)``; empty without labels."""
        if self.labels is None:
            return torch.zeros(0, dtype=torch.float64)
        return torch.bincount(self.labels, minlength=self.num_classes).double() / len(self.labels)

    def summary_line(self) -> str:
        """The summary in one human-readable line."""
        s = self.summary()
        mode = "in memory" if s["in_memory"] else "streamed"
        skipped = f", {s['skipped_files']} corrupt files skipped" if s["skipped_files"] else ""
        classes = f", {s['classes']} classes" if s["classes"] else ""
        return (
            f"dataset {s['name']}: {s['images']} images, {s['resolution']}x{s['resolution']}, "
            f"{s['channels']} channel{'s' if s['channels'] > 1 else ''}{classes}, {mode}, "
            f"fingerprint {s['fingerprint']}{skipped} ({s['source']})"
        )


class TensorImageDataset(ImageDataset):
    """A dataset decoded once and held as one uint8 tensor ``(N, C, R, R)``."""

    def __init__(
        self, name: str, description: str, images: Tensor, params: dict[str, Any], labels: Tensor | None = None
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected uint8 images (N, C, R, R), got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise UserError(f"dataset {name} has no images ({description})")
        if labels is not None and (labels.shape != (len(images),) or labels.is_floating_point() or labels.min() < 0):
            raise ValueError(f"expected one non-negative integer label per image, got {labels.dtype} {labels.shape}")
        super().__init__(name, description, images.shape[2], images.shape[1])
        self.images = images.contiguous()
        self.labels = None if labels is None else labels.to(torch.int64).contiguous()
        self.fingerprint = content_fingerprint(self.images, {"name": name, **params})

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tensor:
        return self.images[index]  # type: ignore[index]


def content_fingerprint(images: Tensor, params: dict[str, Any]) -> str:
    """Hash of the preprocessed pixels and the parameters that produced them (16 hex digits)."""
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    digest.update(repr(sorted(params.items())).encode())
    digest.update(repr(tuple(images.shape)).encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()[:16]


def spread_subset(count: int, limit: int | None) -> np.ndarray:
    """Indices of a fixed subset of ``limit`` items spread evenly over ``count`` (all when ``limit`` is None).

    Taking every k-th item keeps class balance for sources sorted by class (mnist5k is) and needs no seed.
    """
    if limit is None or limit >= count:
        return np.arange(count)
    return np.floor(np.arange(limit) * (count / limit)).astype(np.int64)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Convert uint8 ``(N, C, H, W)`` to ``channels`` (grayscale repeats; RGB uses PIL's ITU-R 601-2 luma)."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        luma = (images.to(torch.int32) * weights).sum(1, keepdim=True)
        return ((luma + 500) // 1000).clamp_(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def fit_square(images: Tensor, resolution: int, pad_small: bool = False) -> Tensor:
    """Resize uint8 ``(N, C, H, W)`` so the shorter side is ``resolution``, then centre-crop to a square.

    With ``pad_small`` an image smaller than the target by an even margin is zero-padded instead (the classic
    28 -> 32 layout of MNIST digits, which keeps every stroke pixel exact).
    """
    _, _, height, width = images.shape
    if height == width == resolution:
        return images
    if pad_small and height == width and height < resolution and (resolution - height) % 2 == 0:
        margin = (resolution - height) // 2
        return F.pad(images, (margin, margin, margin, margin))
    scale = resolution / min(height, width)
    new_h, new_w = max(resolution, round(height * scale)), max(resolution, round(width * scale))
    chunks = []
    for chunk in images.split(4096):
        resized = F.interpolate(
            chunk.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        chunks.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    out = torch.cat(chunks)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    return out[:, :, top : top + resolution, left : left + resolution].contiguous()


# 16-bit grayscale PNGs open as ``I;16`` (``I`` in older Pillow); ``convert("L")`` would clip their 0..65535 to 255.
SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8_bit(image: Image.Image) -> Image.Image:
    """``image`` with 16-bit grayscale samples scaled to 8 bits (``value >> 8``); other modes are returned as is.

    PIL already decodes 16-bit RGB(A) and grayscale-with-alpha PNGs to 8-bit RGB(A) by keeping the high byte; this
    does the same for the grayscale modes it leaves at 16 bits (``I`` is read as 16-bit samples, clipped to 0..65535).
    """
    if image.mode not in SIXTEEN_BIT_GRAY_MODES:
        return image
    samples = np.asarray(image).astype(np.int64)
    return Image.fromarray((samples.clip(0, 65535) >> 8).astype(np.uint8))


def pil_to_uint8(image: Image.Image, resolution: int, channels: int) -> Tensor:
    """Decode-side preprocessing of one PIL image: EXIF orientation, 16 -> 8 bits, mode, resize (Lanczos) of the
    shorter side, centre crop. Raises ``ValueError`` for EXIF data that cannot be parsed."""
    try:
        image = ImageOps.exif_transpose(image)  # cameras store turned photos as unturned pixels plus this tag
    except (SyntaxError, struct.error, OSError, EOFError, ValueError) as error:
        raise ValueError(f"unreadable EXIF data ({error})") from error
    image = to_8_bit(image).convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
