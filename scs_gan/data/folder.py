"""Users' own images: a directory tree or a zip file of png, jpg/jpeg, webp or bmp files.

Small folders are decoded once (in parallel worker processes), cached on disk as uint8 safetensors keyed by
the file list, sizes, modification times and preprocessing, and held in memory; large ones stream. A file that
cannot be used (corrupt or truncated, a broken symbolic link or link loop, a named pipe, device or socket, an
encrypted or unsupported zip member) is skipped with a warning that names it, or stops the run when ``strict``
is set. Only regular files are opened, so a special file never blocks a read.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import struct
import warnings
import zipfile
import zlib
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

try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: zipfile then refuses LZMA members with a RuntimeError
    LZMAError = RuntimeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey pixels
# Part of the cache key: pixels decoded by an older decoder (before EXIF orientation and 16-bit scaling) are stale.
DECODER_VERSION = "folder-decoder-2"
# A larger file is skipped rather than read whole into memory.
MAX_FILE_BYTES = 2**30
_TOO_LARGE = f"bytes, over the {MAX_FILE_BYTES / 2**30:g} GiB limit for one image file"
# What zipfile raises for a member it cannot give back: bad headers or CRC (BadZipFile), damaged or truncated
# compressed data (zlib.error, LZMAError, EOFError, OSError), a decompressor missing from this Python
# (RuntimeError), an archive rewritten since the scan (KeyError, ValueError for names that no longer decode).
_ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, RuntimeError, zlib.error, LZMAError)
_FILE_KINDS = {
    stat.S_IFIFO: "named pipe",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
    stat.S_IFDIR: "directory",
}


class CorruptImageError(Exception):
    """An image file that cannot be read or decoded."""


def printable(text: str) -> str:
    """``text`` safe to print anywhere: undecodable file-name bytes and control characters become escapes."""
    out = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            out.append(char if char.isprintable() else ascii(char)[1:-1])
    return "".join(out)


def _file_kind(mode: int) -> str:
    return _FILE_KINDS.get(stat.S_IFMT(mode), "special file")


def _file_state(path: Path) -> bytes:
    """What the cache key records of one file: size and modification time, or why it cannot be read."""
    try:
        status = os.stat(path)
    except OSError as error:
        return f"unreadable\0{error.errno}".encode()
    if not stat.S_ISREG(status.st_mode):
        return f"{_file_kind(status.st_mode)}\0{status.st_mtime_ns}".encode()
    return f"{status.st_size}\0{status.st_mtime_ns}".encode()


def _open_nonblocking(path: str, flags: int) -> int:
    """``os.open`` that never waits: a named pipe swapped in after the regular-file check opens at once (and then
    fails the ``fstat`` check) instead of blocking until a writer appears."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


@dataclass(frozen=True)
class ImageFiles:
    """The images of a folder or zip: where they are, their names (sorted) and a signature of their state."""

    root: Path
    names: tuple[str, ...]
    is_zip: bool
    signature: str

    def read(self, index: int) -> bytes:
        """The raw bytes of image ``index``; raises :class:`CorruptImageError` unless it is a readable regular
        file (after symbolic links) or zip member."""
        return self._read_member(index) if self.is_zip else self._read_file(index)

    def _read_file(self, index: int) -> bytes:
        path, described = self.root / self.names[index], self.describe(index)
        try:
            status = os.stat(path)
        except OSError as error:
            broken_link = error.errno == errno.ENOENT and os.path.islink(path)
            reason = "broken symbolic link (its target does not exist)" if broken_link else error.strerror
            raise CorruptImageError(f"{described}: cannot be read: {reason}") from None
        if not stat.S_ISREG(status.st_mode):
            raise CorruptImageError(f"{described}: is a {_file_kind(status.st_mode)}, not an image file")
        if status.st_size > MAX_FILE_BYTES:
            raise CorruptImageError(f"{described}: {status.st_size:,} {_TOO_LARGE}")
        try:
            with open(path, "rb", opener=_open_nonblocking) as file:
                opened = os.fstat(file.fileno())
                if not stat.S_ISREG(opened.st_mode):
                    raise CorruptImageError(f"{described}: is a {_file_kind(opened.st_mode)}, not an image file")
                return file.read(min(opened.st_size, MAX_FILE_BYTES))
        except OSError as error:
            raise CorruptImageError(f"{described}: cannot be read: {error.strerror}") from None

    def _read_member(self, index: int) -> bytes:
        described = self.describe(index)
        try:
            with zipfile.ZipFile(self.root) as archive:
                info = archive.getinfo(self.names[index])
                if info.flag_bits & 0x1:
                    raise CorruptImageError(f"{described}: is encrypted (password-protected zip members are not read)")
                if info.file_size > MAX_FILE_BYTES:
                    raise CorruptImageError(f"{described}: {info.file_size:,} {_TOO_LARGE}")
                try:
                    return archive.read(info)
                except NotImplementedError:
                    method = info.compress_type
                    raise CorruptImageError(
                        f"{described}: uses zip compression method {method}, which Python's zipfile cannot decompress"
                    ) from None
        except _ZIP_READ_ERRORS as error:
            raise CorruptImageError(f"{described}: cannot be read from the zip: {printable(str(error))}") from None

    def decode(self, index: int, resolution: int, channels: int) -> Tensor:
        """Decode image ``index`` to uint8 ``(C, R, R)``; raises :class:`CorruptImageError`."""
        data = self.read(index)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return pil_to_uint8(image, resolution, channels)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as error:
            raise CorruptImageError(f"{self.describe(index)}: {printable(str(error))}") from error

    def describe(self, index: int) -> str:
        """A path a user can find, printable whatever bytes the name holds: the file, or ``archive.zip:member``."""
        return printable(f"{self.root}:{self.names[index]}" if self.is_zip else str(self.root / self.names[index]))


def scan_images(path: str | os.PathLike, only: set[str] | None = None) -> ImageFiles:
    """List the images under ``path`` (recursively) or in a zip; errors a user can fix are UserErrors.

    Every name with an image extension is listed, including broken links and special files: reading them fails
    with :class:`CorruptImageError`, so they are reported and counted where corrupt images are.
    """
    root = Path(path).expanduser()
    shown = printable(str(root))
    try:
        root_mode = root.stat().st_mode
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise UserError(f"data.path {shown!r} does not exist; point it at a folder or zip of images") from None
        raise UserError(f"data.path {shown!r} cannot be read ({error.strerror}); point it at a folder or zip") from None
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}:{DECODER_VERSION}".encode())
    if stat.S_ISDIR(root_mode):
        entries = []
        unreadable: list[OSError] = []  # a folder os.walk cannot list would silently leave its images out
        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable.append):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in filenames:
                if filename.lower().endswith(IMAGE_EXTENSIONS) and not filename.startswith("."):
                    full = Path(dirpath) / filename
                    entries.append(full.relative_to(root).as_posix())
        if unreadable:
            error = unreadable[0]
            where = Path(error.filename or root)
            if where == root:
                raise UserError(f"data.path {shown!r} cannot be listed ({error.strerror}); fix its permissions")
            sub = printable(where.relative_to(root).as_posix())
            raise UserError(
                f"data.path {shown!r} has a subfolder that cannot be listed, {sub!r} ({error.strerror}); fix its "
                "permissions or move it out of the data folder"
            )
        names = tuple(sorted(n for n in entries if only is None or Path(n).name in only))
        for name in names:
            digest.update(os.fsencode(name) + b"\0" + _file_state(root / name) + b"\n")
        is_zip = False
    elif stat.S_ISREG(root_mode) and zipfile.is_zipfile(root):
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
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise UserError(f"data.path {shown!r} is not a readable zip file ({printable(str(error))})") from None
        infos = [i for i in infos if only is None or Path(i.filename).name in only]
        infos.sort(key=lambda i: i.filename)
        names = tuple(i.filename for i in infos)
        for info in infos:
            digest.update(f"{info.filename}\0{info.file_size}\0{info.CRC}\n".encode())
        is_zip = True
    else:
        raise UserError(f"data.path {shown!r} is neither a folder nor a zip file of images")
    if not names:
        kinds = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise UserError(f"no images ({kinds}) were found in {shown!r}")
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
        raise UserError(f"none of the {len(files.names)} images in {printable(str(files.root))!r} could be decoded")
    return torch.stack(images), skipped


class StreamingFolderDataset(ImageDataset):
    """A folder too large for memory: each item is decoded when asked for (use loader workers)."""

    def __init__(self, name: str, files: ImageFiles, resolution: int, channels: int, strict: bool) -> None:
        super().__init__(name, f"streamed from {printable(str(files.root))}", resolution, channels)
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
        raise UserError(f"none of the images in {printable(str(self.files.root))!r} could be decoded")


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
            dataset = TensorImageDataset(name, description or f"folder {printable(str(files.root))}", images, params)
            dataset.skipped = skipped
            return dataset
    images, skipped = decode_all(files, resolution, channels, workers, strict)
    atomic_write(cache_file, lambda tmp: save_file({"images": images}, str(tmp), {"skipped": json.dumps(skipped)}))
    dataset = TensorImageDataset(name, description or f"folder {printable(str(files.root))}", images, params)
    dataset.skipped = skipped
    return dataset
