"""Sampling from a trained generator: images by seed, grids, and latent walks (GIF, or MP4 when an encoder is
installed). Image ``k`` comes from seed ``k`` alone - whatever the batch size - because every latent is drawn
from its own seed (:func:`scs_gan.latents.latents_for_seeds`) and the generator runs in eval mode. Images by seed
are generated and written a batch at a time, so any number of seeds runs in the memory of one batch.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import UserError
from .images import paste_tiles, save_image, to_pil, to_uint8, write_errors_as_user_errors
from .io import atomic_write
from .latents import latents_for_seeds, truncate, with_class

MAX_SEED = 2**64 - 1
"""The largest seed: ``torch.Generator.manual_seed``, which draws every latent, takes seeds below 2**64."""

MAX_GRID_IMAGES = 4096
"""The most images one grid may hold (64x64); more belong in one file per seed."""

MAX_ANIMATION_IMAGES = 10_000
"""The most images (frames times walks) one animation may be made of; all of them are held in memory."""

ANIMATION_SUFFIXES = (".gif", ".mp4")

_RANGE = re.compile(r"([0-9]+)-([0-9]+)")
_SINGLE = re.compile(r"([0-9]+)")
_SEED_FILE = re.compile(r"seed([0-9]+)\.png")


def _seed(digits: str) -> int:
    if len(digits.lstrip("0")) > len(str(MAX_SEED)) or int(digits) > MAX_SEED:
        shown = digits if len(digits) <= 30 else digits[:30] + "..."
        raise UserError(f"seeds must be between 0 and {MAX_SEED} (2**64 - 1), got {shown}")
    return int(digits)


def parse_seed_ranges(text: str) -> list[range]:
    """``"0-63"``, ``"3,14,15"`` or a mix (``"0-3,10"``) to ranges of seeds in the order given, without listing
    them (``"0-100000000"`` is one ``range``); every seed lies in ``[0, MAX_SEED]``."""
    ranges: list[range] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = _RANGE.fullmatch(part) or _SINGLE.fullmatch(part)
        if not match:
            raise UserError(f"seeds must look like 0-63 or 3,14,15, got {text!r}")
        start, stop = _seed(match.group(1)), _seed(match.group(match.lastindex))
        if stop < start:
            raise UserError(f"seed range {part!r} runs backwards")
        ranges.append(range(start, stop + 1))
    if not ranges:
        raise UserError("no seeds given")
    return ranges


def count_seeds(ranges: Iterable[range]) -> int:
    """How many seeds ``ranges`` hold (also beyond ``len()``'s limit of 2**63 - 1)."""
    return sum(r.stop - r.start for r in ranges)


def parse_seeds(text: str, limit: int | None = None) -> list[int]:
    """``"0-63"``, ``"3,14,15"`` or a mix (``"0-3,10"``) to a list of seeds; more than ``limit`` are refused before
    the list is built."""
    ranges = parse_seed_ranges(text)
    count = count_seeds(ranges)
    if limit is not None and count > limit:
        raise UserError(f"--seeds {text!r} names {count:,} seeds, more than the {limit:,} allowed here")
    return [seed for r in ranges for seed in r]


def parse_grid(text: str | None, count: int) -> tuple[int, int]:
    """``"8x8"`` to (rows, columns); None picks a near-square grid for ``count`` images."""
    if count > MAX_GRID_IMAGES:
        raise UserError(
            f"a grid holds at most {MAX_GRID_IMAGES:,} images (64x64), but {count:,} were asked for; "
            "write more as one file per seed (generate --outdir)"
        )
    if text is None:
        columns = max(1, math.ceil(math.sqrt(count)))
        return math.ceil(count / columns), columns
    match = re.fullmatch(r"0*([0-9]+)x0*([0-9]+)", text.strip())
    if not match or "0" in match.groups():
        raise UserError(f"--grid must look like 8x8 (rows x columns), got {text!r}")
    if sum(map(len, match.groups())) > 9 or int(match.group(1)) * int(match.group(2)) > MAX_GRID_IMAGES:
        shown = text if len(text) <= 30 else text[:30] + "..."
        raise UserError(f"--grid {shown} has more cells than the {MAX_GRID_IMAGES:,} a grid may hold")
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


@torch.no_grad()
def iter_images(
    generator: nn.Module, seeds: Iterable[int], batch: int = 64, trunc: float = 1.0
) -> Iterator[tuple[list[int], Tensor]]:
    """``(seeds, uint8 images (n, C, H, W))`` for ``batch`` seeds at a time, in order. Only one batch of latents and
    images exists at a time, so ``seeds`` may be as long as wanted (e.g. ``range(10**8)``)."""
    generator.eval()
    device = _device_of(generator)
    remaining = iter(seeds)
    while chunk := list(itertools.islice(remaining, max(1, batch))):
        latents = seed_latents(chunk, generator.z_dim, trunc, conditional=is_conditional(generator))
        yield chunk, to_uint8(generator(latents.to(device))).cpu()


class ClassChoice(nn.Module):
    """A conditional generator that draws every image from one class: each latent code is moved into
    ``cls``'s interval of the first coordinate (:func:`scs_gan.latents.with_class`), the rest of the code kept,
    so seed k gives the class-``cls`` image closest to what seed k gives on its own."""

    def __init__(self, generator: nn.Module, cls: int) -> None:
        super().__init__()
        if not is_conditional(generator):
            raise UserError("--class needs a class-conditional generator (model.num_classes > 0); this one is not")
        if not 0 <= cls < generator.num_classes:
            raise UserError(f"--class must be between 0 and {generator.num_classes - 1} for this generator, got {cls}")
        self.generator, self.cls = generator, cls
        self.z_dim, self.num_classes = generator.z_dim, generator.num_classes

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(with_class(z, self.cls, self.generator.class_cdf))


def choose_class(generator: nn.Module, cls: int | None) -> nn.Module:
    """``generator``, or with ``cls`` a :class:`ClassChoice` of it (a clear error if it cannot have one)."""
    return generator if cls is None else ClassChoice(generator, cls)


def is_conditional(generator: nn.Module) -> bool:
    """Whether ``generator`` reads a class from its latents' first coordinate (``model.num_classes`` > 0)."""
    return getattr(generator, "num_classes", 0) > 0


def seed_latents(seeds: Sequence[int], z_dim: int, trunc: float = 1.0, conditional: bool = False) -> Tensor:
    """Latents of ``seeds``, truncated towards the mean (zero) by ``trunc`` (1 = none, 0 = the mean); for a
    ``conditional`` generator the first coordinate, which picks the class, is not truncated."""
    if not 0.0 <= trunc <= 1.0:
        raise UserError(f"--trunc must be between 0 and 1, got {trunc}")
    return truncate(latents_for_seeds(seeds, z_dim), trunc, conditional)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (falls back to linear when they are parallel)."""
    a_unit, b_unit = a / a.norm(), b / b.norm()
    omega = torch.acos((a_unit * b_unit).sum().clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def _walk_length(seed_count: int, frames: int, loop: bool) -> int:
    if seed_count < 2:
        raise UserError("an interpolation needs at least two seeds, e.g. --seeds 3,14,15")
    if frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}")
    return seed_count * frames if loop else (seed_count - 1) * frames + 1


def walk_latents(
    seeds: Sequence[int], z_dim: int, frames: int, trunc: float = 1.0, loop: bool = False, conditional: bool = False
) -> Tensor:
    """``frames`` latents per segment between consecutive seeds (and back to the first with ``loop``)."""
    _walk_length(len(seeds), frames, loop)
    keys = seed_latents(seeds, z_dim, trunc, conditional)
    if loop:
        keys = torch.cat([keys, keys[:1]])
    out = []
    for i in range(len(keys) - 1):
        for f in range(frames):
            out.append(slerp(keys[i], keys[i + 1], f / frames))
    if not loop:
        out.append(keys[-1])
    return torch.stack(out)


def check_walks(walks: Sequence[Sequence[int]], frames: int, loop: bool) -> None:
    """Refuse, before any work, walks that differ in length, are too short, or would make an animation of more
    than ``MAX_ANIMATION_IMAGES`` images in all."""
    if not walks:
        raise UserError("no seeds given")
    if len({len(w) for w in walks}) != 1:
        raise UserError("all walks in --seeds must have the same number of seeds")
    length = _walk_length(len(walks[0]), frames, loop)
    if length * len(walks) > MAX_ANIMATION_IMAGES:
        raise UserError(
            f"{len(walks)} walk(s) of {length:,} frames make {length * len(walks):,} images, more than the "
            f"{MAX_ANIMATION_IMAGES:,} an animation may hold; use fewer seeds or a smaller --frames"
        )


def check_output_file(path: Path, suffixes: Collection[str]) -> None:
    """Refuse, before any work, an ``--out`` that is a directory or whose suffix is not one of ``suffixes``."""
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; name a file in it, e.g. {path / ('out' + next(iter(suffixes)))}")
    if path.suffix.lower() not in suffixes:
        *others, last = suffixes
        raise UserError(f"--out must end in {', '.join(others)} or {last}, got {path.name!r}")


def seed_file_name(seed: int) -> str:
    """The file one seed's image is written to in an ``--outdir``: ``seed0042.png``."""
    return f"seed{seed:04d}.png"


def check_outdir(outdir: Path, ranges: Sequence[range], overwrite: bool = False) -> None:
    """Refuse, before anything is written, an ``outdir`` that is a file or - unless ``overwrite`` - that already
    holds a file the seeds in ``ranges`` would replace (named: the first one that would be written). Reads the
    directory once, so it costs nothing per seed."""
    if not outdir.exists():
        return
    if not outdir.is_dir():
        raise UserError(f"--outdir {outdir} is a file, not a directory")
    if overwrite:
        return
    with write_errors_as_user_errors(outdir):
        names = set(os.listdir(outdir))
    existing = {int(m.group(1)) for m in map(_SEED_FILE.fullmatch, names) if m}
    clashes = [seed for seed in existing if seed_file_name(seed) in names and any(seed in r for r in ranges)]
    if clashes:
        first = min(clashes, key=lambda seed: (next(i for i, r in enumerate(ranges) if seed in r), seed))
        more = f" (and {len(clashes) - 1:,} more of the files to write)" if len(clashes) > 1 else ""
        raise UserError(
            f"{outdir / seed_file_name(first)} already exists{more}; pass --overwrite to replace "
            f"{'them' if more else 'it'}, or choose another --outdir"
        )


def write_per_seed(
    generator: nn.Module,
    seeds: Iterable[int],
    outdir: Path,
    batch: int = 64,
    trunc: float = 1.0,
    total: int | None = None,
    bar_delay: float = 2.0,
) -> int:
    """One PNG per seed in ``outdir`` (``seed0042.png``), generated and written ``batch`` at a time, each file
    atomically; returns how many were written. Existing files are replaced (see :func:`check_outdir`). Once it has
    run ``bar_delay`` seconds, a bar on stderr counts the images (out of ``total``, the number of seeds, if given);
    a short export shows none."""
    written = 0
    with tqdm(total=total, desc=f"generating and writing images to {outdir}", unit="img", delay=bar_delay) as bar:
        for chunk, images in iter_images(generator, seeds, batch, trunc):
            for seed, image in zip(chunk, images, strict=True):
                save_image(image.permute(1, 2, 0).numpy(), outdir / seed_file_name(seed))
                written += 1
            bar.update(len(chunk))
    return written


def write_grid(
    generator: nn.Module,
    seeds: Iterable[int],
    path: Path,
    rows: int,
    columns: int,
    batch: int = 64,
    trunc: float = 1.0,
) -> None:
    """The images of ``seeds`` tiled row by row into a ``rows`` x ``columns`` grid (empty cells black), written in
    the format ``path``'s suffix names; images are generated ``batch`` at a time into the grid."""
    grid = None
    filled = 0
    for _, images in iter_images(generator, seeds, batch, trunc):
        if grid is None:
            channels, height, width = images.shape[1:]
            grid = torch.zeros(channels, rows * height, columns * width, dtype=torch.uint8)
        if filled + len(images) > rows * columns:
            raise UserError(f"a {rows}x{columns} grid holds {rows * columns} images, but more seeds were given")
        paste_tiles(grid, images, filled, columns)
        filled += len(images)
    if grid is None:
        raise UserError("no seeds given")
    save_image(grid.permute(1, 2, 0).numpy(), path)


def _save_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg, written atomically (the container is named with
    ``-f mp4``: the temporary file's suffix is not ``.mp4``)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UserError("writing MP4 needs an encoder: pip install imageio-ffmpeg (or write a .gif)") from None
    rgb = [np.ascontiguousarray(f if f.shape[2] == 3 else np.repeat(f, 3, axis=2)) for f in frames]
    height, width = rgb[0].shape[:2]

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, macro_block_size=2, output_params=["-f", "mp4"]
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in rgb:
                writer.send(frame)
        finally:
            writer.close()

    try:
        atomic_write(path, write)
    except Exception as error:
        if isinstance(error, OSError) and error.errno is not None:  # the file: read-only, in the way, disk full
            raise UserError(f"cannot write {path} ({error.strerror})") from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # the encoder's first line
        raise UserError(f"could not write {path} ({reason}); write a .gif instead") from None


def save_animation(frames: list[np.ndarray], path: Path, fps: float = 15.0) -> None:
    """Write frames (uint8 ``(H, W, C)``) as a looping GIF, or as MP4 when the suffix asks for it (``fps`` > 0)."""
    if path.suffix.lower() == ".mp4":
        _save_mp4(frames, path, fps)
        return
    if path.suffix.lower() != ".gif":
        raise UserError(f"--out must end in .gif or .mp4, got {path.name!r}")
    images = [to_pil(f) for f in frames]
    duration = max(20, round(1000 / fps))
    with write_errors_as_user_errors(path):
        atomic_write(
            path,
            lambda tmp: images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False
            ),
        )
