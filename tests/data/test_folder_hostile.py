"""Folder and zip datasets given hostile inputs: special files, broken links, odd names, odd zips, 16-bit and EXIF.

Every case uses real files. A bad entry is skipped with a warning naming it (the good images still load, with
their exact pixels) or, with ``strict``, stops the load with a UserError; never a traceback, never a hang.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scs_gan.data import DataConfig, build_dataset
from scs_gan.data.folder import MAX_FILE_BYTES
from scs_gan.errors import UserError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="named pipes, sockets and /dev/zero are POSIX files")

GOOD_LEVELS = [40, 80, 120]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _fail_instead_of_hanging():
    """A load that blocks (on a named pipe, say) raises here after two minutes instead of stalling the suite."""

    def timeout(signum, frame):
        raise TimeoutError("the dataset load hung")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _write_good_pngs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, level in enumerate(GOOD_LEVELS):
        Image.new("L", (8, 8), color=level).save(folder / f"good{i}.png")


def _load(path: Path, **options):
    """The dataset (resolution 8, in-process decoding) and the warning messages the load gave."""
    options = {"resolution": 8, "workers": 0, **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(name="folder", path=str(path), **options))
    return dataset, [str(w.message) for w in caught]


def _assert_only_good_images(dataset) -> None:
    assert len(dataset) == len(GOOD_LEVELS)
    levels = dataset.images[:, 0, 0, 0]
    assert sorted(levels.tolist()) == GOOD_LEVELS
    assert torch.equal(dataset.images, levels.view(-1, 1, 1, 1).expand_as(dataset.images))


def _assert_skipped(path: Path, shown_name: str, reason: str) -> None:
    """Loading ``path`` skips exactly one bad entry, named in a warning with ``reason``; strict stops with it."""
    dataset, messages = _load(path)
    _assert_only_good_images(dataset)
    assert len(dataset.skipped) == 1 and dataset.summary()["skipped_files"] == 1
    named = [m for m in messages if shown_name in m]
    assert len(named) == 1 and reason in named[0], messages
    assert any("skipped 1 corrupt image file" in m for m in messages)
    with pytest.raises(UserError) as raised:
        _load(path, strict=True)
    message = str(raised.value)
    assert shown_name in message and reason in message and "data.strict is set" in message
    assert "\n" not in message
    message.encode("ascii")  # printable on any terminal


# ------------------------------------------------------------------------------------------- special files


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.close()  # the socket file stays on disk


@pytest.mark.parametrize(
    "make,reason", [(_make_fifo, "is a named pipe"), (_make_socket, "is a socket")], ids=["fifo", "socket"]
)
def test_special_files_are_skipped_without_being_opened(tmp_path, make, reason):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    make(folder / "special.png")
    _assert_skipped(folder, str(folder / "special.png"), reason)


def _run_cli(*args: str, cache: Path, memory_limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m scs_gan ARGS`` in a fresh process (optionally under an address-space limit), five minutes at most."""
    limit = f"resource.setrlimit(resource.RLIMIT_AS, ({memory_limit}, {memory_limit}))" if memory_limit else "pass"
    code = f"import resource, runpy; {limit}; runpy.run_module('scs_gan', run_name='__main__', alter_sys=True)"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SCS_GAN_CACHE": str(cache)},
        timeout=300,
        check=False,
    )


def test_a_symlink_to_dev_zero_is_skipped_unread(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    os.symlink("/dev/zero", folder / "zero.png")
    # in a child capped at 4 GiB of address space: a regression reading /dev/zero fails there, not the machine
    args = ("data", "data.name=folder", f"data.path={folder}", "data.resolution=8", "data.workers=0")
    result = _run_cli(*args, cache=tmp_path / "cache", memory_limit=4 * 2**30)
    assert result.returncode == 0, result.stderr
    assert "3 images" in result.stdout and "1 corrupt files skipped" in result.stdout
    assert f"{folder / 'zero.png'}: is a character device, not an image file" in result.stderr
    strict = _run_cli(*args, "data.strict=true", cache=tmp_path / "cache", memory_limit=4 * 2**30)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines() == [
        f"error: corrupt image {folder / 'zero.png'}: is a character device, not an image file "
        "(data.strict is set; remove the file or unset strict)"
    ]


def test_cli_data_with_a_fifo_and_a_corrupt_odd_name_finishes_with_warnings_or_one_line(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    os.mkfifo(folder / "pipe.png")
    with open(os.fsencode(folder) + b"/bad\xff.png", "wb") as file:
        file.write(b"not an image")
    args = ("data", "data.name=folder", f"data.path={folder}", "data.resolution=8")
    result = _run_cli(*args, cache=tmp_path / "cache")  # default data.workers: files are read in worker processes
    assert result.returncode == 0, result.stderr
    assert "3 images" in result.stdout and "2 corrupt files skipped" in result.stdout
    assert "pipe.png: is a named pipe" in result.stderr and "bad\\xff.png" in result.stderr
    strict = _run_cli(*args, "data.strict=true", cache=tmp_path / "cache")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: corrupt image ") and "data.strict is set" in lines[0]


def test_a_file_over_the_size_limit_is_skipped_unread(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    with open(folder / "huge.png", "wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: takes no disk space
    _assert_skipped(folder, "huge.png", "over the 1 GiB limit")


# ------------------------------------------------------------------------------------------------- symlinks


def test_a_dangling_symlink_is_skipped_and_loads_once_its_target_exists(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    target = tmp_path / "elsewhere.png"
    os.symlink(target, folder / "link.png")
    _assert_skipped(folder, "link.png", "broken symbolic link")
    Image.new("L", (8, 8), color=200).save(target)
    fixed, messages = _load(folder)  # the file list's state keys the cache: the fixed link is not served stale
    assert not messages and sorted(fixed.images[:, 0, 0, 0].tolist()) == [*GOOD_LEVELS, 200]


@pytest.mark.parametrize("pair", [False, True], ids=["self-loop", "two-link-loop"])
def test_a_symlink_loop_is_skipped(tmp_path, pair):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    if pair:
        os.symlink("loop.png", folder / ".other.png")  # hidden names are not listed, but the loop is real
        os.symlink(".other.png", folder / "loop.png")
    else:
        os.symlink("loop.png", folder / "loop.png")
    _assert_skipped(folder, "loop.png", os.strerror(errno.ELOOP))


# ---------------------------------------------------------------------------------------------- odd names


def _bytes_name_file(folder: Path, name: bytes, data: bytes) -> None:
    try:
        with open(os.fsencode(folder) + b"/" + name, "wb") as file:
            file.write(data)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not store names that are not valid UTF-8")


def test_names_with_undecodable_bytes_load_and_are_printed_safely(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    stray = tmp_path / "stray.png"
    Image.new("L", (8, 8), color=160).save(stray)
    _bytes_name_file(folder, b"\xff\xfe.png", stray.read_bytes())
    _bytes_name_file(folder, b"bad\xff\x1b.png", b"not an image")
    dataset, messages = _load(folder)
    assert sorted(dataset.images[:, 0, 0, 0].tolist()) == [*GOOD_LEVELS, 160]  # the odd name is a good image
    assert len(dataset.skipped) == 1 and "bad\\xff\\x1b.png" in dataset.skipped[0]
    assert any("bad\\xff\\x1b.png" in m for m in messages)
    for message in messages:
        message.encode("ascii")
    again, messages_again = _load(folder)  # from the disk cache, skipped names included
    assert torch.equal(again.images, dataset.images) and again.fingerprint == dataset.fingerprint
    assert again.skipped == dataset.skipped and any("bad\\xff\\x1b.png" in m for m in messages_again)
    with pytest.raises(UserError, match=r"bad\\xff\\x1b\.png"):
        _load(folder, strict=True)


# --------------------------------------------------------------------------------------------------- zips


def _zip_of_good_pngs(path: Path, extra: bytes, compression: int = zipfile.ZIP_STORED) -> None:
    """A zip of the good PNGs plus ``bad.png`` holding ``extra``."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for i, level in enumerate(GOOD_LEVELS):
            image = Image.new("L", (8, 8), color=level)
            with archive.open(f"good{i}.png", "w") as member:
                image.save(member, format="PNG")
        archive.writestr("bad.png", extra)


def _patch_zip_headers(path: Path, member: str, method: int | None = None, set_flags: int = 0) -> None:
    """Rewrite ``member``'s compression method and/or set flag bits in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(member)] != member.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    for flags_at, method_at in ((local + 6, local + 8), (central + 8, central + 10)):
        (flags,) = struct.unpack_from("<H", data, flags_at)
        struct.pack_into("<H", data, flags_at, flags | set_flags)
        if method is not None:
            struct.pack_into("<H", data, method_at, method)
    path.write_bytes(bytes(data))


def test_an_lzma_zip_loads(tmp_path):
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_LZMA) as z:
        for i, level in enumerate(GOOD_LEVELS):
            with z.open(f"good{i}.png", "w") as member:
                Image.new("L", (8, 8), color=level).save(member, format="PNG")
    dataset, messages = _load(archive)
    _assert_only_good_images(dataset)
    assert not messages


def test_a_zip_member_with_an_unknown_compression_method_is_skipped(tmp_path):
    archive = tmp_path / "imgs.zip"
    _zip_of_good_pngs(archive, b"stored bytes")
    _patch_zip_headers(archive, "bad.png", method=97)  # 97 is WavPack in the zip specification
    _assert_skipped(archive, f"{archive}:bad.png", "compression method 97")


def test_an_encrypted_zip_member_is_skipped(tmp_path):
    archive = tmp_path / "imgs.zip"
    _zip_of_good_pngs(archive, b"pretend ciphertext")
    _patch_zip_headers(archive, "bad.png", set_flags=0x1)
    _assert_skipped(archive, f"{archive}:bad.png", "is encrypted")


def test_a_zip_member_with_damaged_deflate_data_is_skipped(tmp_path):
    archive = tmp_path / "imgs.zip"
    payload = bytes(range(256)) * 64
    _zip_of_good_pngs(archive, payload, compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("bad.png")
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start : start + info.compress_size] = b"\xff" * info.compress_size  # not a valid deflate stream
    archive.write_bytes(bytes(data))
    _assert_skipped(archive, f"{archive}:bad.png", "cannot be read from the zip")


def test_a_zip_whose_utf8_names_are_invalid_is_one_clear_error(tmp_path):
    archive = tmp_path / "imgs.zip"
    _zip_of_good_pngs(archive, b"")
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    name_at = central + 46
    assert data[name_at : name_at + 2] == b"go"
    data[name_at : name_at + 2] = b"\xff\xfe"
    struct.pack_into("<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | 0x800)  # UTF-8 names
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is not a readable zip file"):
        _load(archive)


# ----------------------------------------------------------------------------------------- pixel decoding


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_16_bit(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG of ``samples`` (H, W) or (H, W, C), written by hand (PIL cannot write 16-bit RGB)."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_grayscale_png_ramp_keeps_its_levels(tmp_path, channels):
    folder = tmp_path / "imgs"
    folder.mkdir()
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once, row by row
    Image.fromarray(ramp).save(folder / "ramp.png")
    assert Image.open(folder / "ramp.png").mode in ("I;16", "I")  # really a 16-bit file
    dataset, messages = _load(folder, resolution=256, channels=channels)
    assert not messages
    out = dataset.images[0].to(torch.int64)
    assert torch.equal(out, out[:1].expand_as(out))  # grey: all channels equal
    rows = out[0]
    assert torch.equal(rows, torch.arange(256).view(256, 1).expand(256, 256))  # value >> 8
    flat = rows.flatten()
    assert len(torch.unique(flat)) == 256 and bool((flat[1:] >= flat[:-1]).all())
    assert (flat == 255).sum() == 256 and bool((rows[-1] == 255).all())  # 255 only for the top 256 values


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4)], ids=["rgb", "rgba"])
def test_a_16_bit_colour_png_ramp_keeps_its_levels(tmp_path, color_type, channels):
    folder = tmp_path / "imgs"
    folder.mkdir()
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(1, 256, 1)  # 0 .. 65535
    samples = np.broadcast_to(ramp, (256, 256, channels)).copy()
    samples[..., 1] = 65535 - samples[..., 1]  # green runs the other way
    if channels == 4:
        samples[..., 3] = 65535
    (folder / "ramp.png").write_bytes(_png_16_bit(samples, color_type))
    dataset, messages = _load(folder, resolution=256, channels=3)
    assert not messages
    levels = torch.arange(256).view(1, 256).expand(256, 256)
    image = dataset.images[0].to(torch.int64)
    assert torch.equal(image[0], levels) and torch.equal(image[2], levels) and torch.equal(image[1], 255 - levels)


def _asymmetric_pattern() -> np.ndarray:
    """An 8x8 image whose every rotation and mirror differs: pixel (y, x) = 3 * (8y + x)."""
    return (np.arange(64).reshape(8, 8) * 3).astype(np.uint8)


@pytest.mark.parametrize("orientation,turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied_to_png(tmp_path, orientation, turns):
    folder = tmp_path / "imgs"
    folder.mkdir()
    stored = _asymmetric_pattern()
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: turn 90 degrees clockwise to view, 8: counter-clockwise, 3: 180 degrees
    Image.fromarray(stored).save(folder / "photo.png", exif=exif.tobytes())
    assert Image.open(folder / "photo.png").getexif()[0x0112] == orientation
    dataset, _ = _load(folder)
    assert torch.equal(dataset.images[0, 0], torch.from_numpy(np.rot90(stored, turns).copy()))


def test_exif_orientation_is_applied_to_jpeg(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    stored = np.zeros((32, 32), np.uint8)
    stored[:16, 16:] = 250  # bright top-right quadrant as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # viewed turned 90 degrees clockwise: the bright quadrant is bottom-right
    Image.fromarray(stored).save(folder / "photo.jpg", exif=exif.tobytes(), quality=95)
    dataset, _ = _load(folder, resolution=32)
    image = dataset.images[0, 0].float()
    quadrants = {"top-left": image[:16, :16], "top-right": image[:16, 16:], "bottom-left": image[16:, :16]}
    assert image[16:, 16:].mean() > 200 and all(q.mean() < 50 for q in quadrants.values())


def test_an_image_with_unreadable_exif_data_is_skipped(tmp_path):
    folder = tmp_path / "imgs"
    _write_good_pngs(folder)
    png = (folder / "good0.png").read_bytes()
    exif = _png_chunk(b"eXIf", b"MM\x00*")  # a TIFF header cut off before the offset of its first directory
    (folder / "exif.png").write_bytes(png[:33] + exif + png[33:])  # after the signature and IHDR
    _assert_skipped(folder, "exif.png", "unreadable EXIF data")


@pytest.mark.parametrize(
    "make,message",
    [
        (_make_fifo, "is neither a folder nor a zip file"),
        (lambda path: os.symlink("/dev/zero", path), "is neither a folder nor a zip file"),
        (lambda path: os.symlink(path.name, path), f"cannot be read ({os.strerror(errno.ELOOP)})"),
    ],
    ids=["fifo", "symlink-to-dev-zero", "symlink-loop"],
)
def test_a_hostile_data_path_is_one_clear_error(tmp_path, make, message):
    path = tmp_path / "data.zip"
    make(path)
    with pytest.raises(UserError) as raised:
        _load(path)
    assert str(raised.value).startswith(f"data.path {str(path)!r} {message}")


@pytest.mark.parametrize("which", ["subfolder", "root"])
def test_a_folder_that_cannot_be_listed_is_one_clear_error_not_fewer_images(tmp_path, monkeypatch, which):
    """os.walk skips a folder it cannot list unless asked: the load would silently train on fewer images.
    chmod makes the folder unlistable for a normal user; root (as in CI containers) ignores the mode, so there
    ``os.scandir`` (what os.walk lists with) fails on it with the PermissionError a normal user gets."""
    root = tmp_path / "data"
    _write_good_pngs(root)
    _write_good_pngs(root / "b" / "locked")
    locked = root if which == "root" else root / "b" / "locked"
    locked.chmod(0o000)
    if os.geteuid() == 0:
        real_scandir = os.scandir

        def scandir(path="."):
            if Path(path).resolve() == locked.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        with pytest.raises(UserError) as raised:
            _load(root)
    finally:
        locked.chmod(0o755)
    denied = os.strerror(errno.EACCES)
    if which == "root":
        assert str(raised.value) == f"data.path {str(root)!r} cannot be listed ({denied}); fix its permissions"
    else:
        assert str(raised.value) == (
            f"data.path {str(root)!r} has a subfolder that cannot be listed, 'b/locked' ({denied}); fix its "
            "permissions or move it out of the data folder"
        )
