"""Users' own images: a directory tree or a zip file of png, jpg/jpeg, webp or bmp files.

Small folders are decoded once (in parallel worker processes), cached on disk as uint8 safetensors keyed by
the file list, sizes, modification times and preprocessing, and held in memory; large ones stream. A corrupt
or truncated file is skipped with a warning that names it, or stops the run when ``strict`` is set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFile
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from ..io import atomic_write, cache_dir
from .dataset import FINGERPRINT_VERSION, ImageDataset, TensorImageDataset, pil_to_uint8, spread_subset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey pixels


class CorruptImageError(Exception):
    """An image file that cannot be decoded."""


@dataclass(frozen=True)
class ImageFiles:
    """The images of a folder or zip: where they are, their names (sorted) and a signature of their state."""

    root: Path
    names: tuple[str, ...]
    is_zip: bool
    signature: str

    def read(self, index: int) -> bytes:
        """The raw bytes of image ``index``."""
        name = self.names[index]
        if self.is_zip:
            with zipfile.ZipFile(self.root) as archive:
                return archive.read(name)
        return (self.root / name).read_bytes()

    def decode(self, index: int, resolution: int, channels: int) -> Tensor:
        """Decode image ``index`` to uint8 ``(C, R, R)``; raises :class:`CorruptImageError`."""
        try:
            with Image.open(io.BytesIO(self.read(index))) as image:
                image.load()
                return pil_to_uint8(image, resolution, channels)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, zipfile.BadZipFile) as error:
            raise CorruptImageError(f"{self.describe(index)}: {error}") from error

    def describe(self, index: int) -> str:
        """A path a user can find: the file, or ``archive.zip:member``."""
        return f"{self.root}:{self.names[index]}" if self.is_zip else str(self.root / self.names[index])


def scan_images(path: str | os.PathLike, only: set[str] | None = None) -> ImageFiles:
    """List the images under ``path`` (recursively) or in a zip; errors a user can fix are UserErrors."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"data.path {str(root)!r} does not exist; point it at a folder or zip of images")
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    if root.is_dir():
        entries = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                    full = Path(dirpath) / filename
                    entries.append(full.relative_to(root).as_posix())
        names = tuple(sorted(n for n in entries if only is None or Path(n).name in only))
        for name in names:
            stat = (root / name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        is_zip = False
    elif zipfile.is_zipfile(root):
        try:
            with zipfile.ZipFile(root) as archive:
                infos = [
                    i
                    for i in archive.infolist()
                    if not i.is_dir()
                    and i.filename.lower().endswith(IMAGE_EXTENSIONS)
                    and not Path(i.filename).name.startswith(".")
                    and "__MACOSX" not in i.filename
                ]
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(f"data.path {str(root)!r} is not a readable zip file ({error})") from None
        infos = [i for i in infos if only is None or Path(i.filename).name in only]
        infos.sort(key=lambda i: i.filename)
        names = tuple(i.filename for i in infos)
        for info in infos:
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        is_zip = True
    else:
        raise UserError(f"data.path {str(root)!r} is neither a folder nor a zip file of images")
    if not names:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise UserError(f"no images ({kinds}) were found in {str(root)!r}")
    return ImageFiles(root, names, is_zip, digest.hexdigest())


def limit_files(files: ImageFiles, max_images: int | None) -> ImageFiles:
    """At most ``max_images`` of ``files``, spread evenly over the sorted list."""
    if max_images is None or max_images >= len(files.names):
        return files
    keep = spread_subset(len(files.names), max_images)
    return ImageFiles(files.root, tuple(files.names[i] for i in keep), files.is_zip, f"{files.signature}:{max_images}")


class _DecodeAll(Dataset):
    """Decodes each file for the one-time in-memory load; corrupt files come back as ``None``."""

    def __init__(self, files: ImageFiles, resolution: int, channels: int) -> None:
        self.files, self.resolution, self.channels = files, resolution, channels

    def __len__(self) -> int:
        return len(self.files.names)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str]:
        try:
            return index, self.files.decode(index, self.resolution, self.channels), ""
        except CorruptImageError as error:
            return index, None, str(error)


def _collate(items):
    return items


def _report_corrupt(messages: list[str], strict: bool) -> None:
    if not messages:
        return
    if strict:
        raise UserError(f"corrupt image {messages[0]} (data.strict is set; remove the file or unset strict)")
    for message in messages:
        warnings.warn(f"skipping corrupt image {message}", stacklevel=3)
    warnings.warn(f"skipped {len(messages)} corrupt image file(s)", stacklevel=3)


def decode_all(files: ImageFiles, resolution: int, channels: int, workers: int, strict: bool):
    """Decode every file once: returns (uint8 images (N, C, R, R), list of skipped file descriptions)."""
    loader = DataLoader(
        _DecodeAll(files, resolution, channels),
        batch_size=64,
        num_workers=workers,
        collate_fn=_collate,
    )
    images: list[Tensor] = []
    skipped: list[str] = []
    for batch in loader:
        for _, image, message in batch:
            if image is None:
                if strict:
                    _report_corrupt([message], strict=True)
                skipped.append(message)
            else:
                images.append(image)
    _report_corrupt(skipped, strict=False)
    if not images:
        raise UserError(f"none of the {len(files.names)} images in {str(files.root)!r} could be decoded")
    return torch.stack(images), skipped


class StreamingFolderDataset(ImageDataset):
    """A folder too large for memory: each item is decoded when asked for (use loader workers)."""

    def __init__(self, name: str, files: ImageFiles, resolution: int, channels: int, strict: bool) -> None:
        super().__init__(name, f"streamed from {files.root}", resolution, channels)
        self.files, self.strict = files, strict
        digest = hashlib.sha256(files.signature.encode())
        digest.update(f"{name}:{resolution}:{channels}".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.files.names)

    def __getitem__(self, index: int) -> Tensor:
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return self.files.decode(candidate, self.resolution, self.channels)
            except CorruptImageError as error:
                _report_corrupt([str(error)], self.strict)
                self.skipped.append(str(error))
        raise UserError(f"none of the images in {str(self.files.root)!r} could be decoded")


def load_folder(
    name: str,
    files: ImageFiles,
    resolution: int,
    channels: int,
    workers: int,
    strict: bool,
    in_memory_mb: int,
    description: str | None = None,
) -> ImageDataset:
    """An in-memory (decoded once, cached on disk) or streaming dataset over ``files``."""
    size_mb = len(files.names) * channels * resolution * resolution / 2**20
    if size_mb > in_memory_mb:
        return StreamingFolderDataset(name, files, resolution, channels, strict)
    key = hashlib.sha256(f"{files.signature}:{resolution}:{channels}".encode()).hexdigest()[:24]
    cache_file = cache_dir("datasets") / f"{name}-{key}.safetensors"
    params = {"source": name, "signature": files.signature, "resolution": resolution, "channels": channels}
    if cache_file.exists():
        try:
            with safe_open(str(cache_file), framework="pt") as stored:
                images = stored.get_tensor("images")
                skipped = json.loads((stored.metadata() or {}).get("skipped", "[]"))
        except (OSError, KeyError, RuntimeError, ValueError, SafetensorError):
            cache_file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
        else:
            _report_corrupt(skipped, strict)
            dataset = TensorImageDataset(name, description or f"folder {files.root}", images, params)
            dataset.skipped = skipped
            return dataset
    images, skipped = decode_all(files, resolution, channels, workers, strict)
    atomic_write(cache_file, lambda tmp: save_file({"images": images}, str(tmp), {"skipped": json.dumps(skipped)}))
    dataset = TensorImageDataset(name, description or f"folder {files.root}", images, params)
    dataset.skipped = skipped
    return dataset
