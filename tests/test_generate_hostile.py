"""Hostile input to ``scs-gan generate`` and ``scs-gan interpolate``: every case ends in one sentence on stderr
and exit code 2 - never a traceback, a hang, a silently replaced file or a file in the wrong format."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import scs_gan.generate
import scs_gan.snapshot
from scs_gan.cli import main
from scs_gan.generate import MAX_SEED

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_snapshot(directory: Path) -> Path:
    """A small real generator snapshot (width 4, z_dim 32, 32x32 grayscale) in ``directory``.

    It is the committed format-v1 fixture, which every later scs_gan must still load (tests/fixtures/README.md),
    so these tests do not depend on how snapshots are written today. The one place to change if that changes.
    """
    path = directory / "network-snapshot-000001.safetensors"
    shutil.copyfile(FIXTURES / "v1-generator-w4.safetensors", path)
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    return str(make_snapshot(tmp_path_factory.mktemp("snapshot")))


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``scs-gan ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_sentence(code: int, err: str, *fragments: str) -> str:
    """The command failed with exit code 2 and one line on stderr, holding every fragment, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def seed_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


# ------------------------------------------------------------------------------------- 1. seeds out of range


@pytest.mark.parametrize(
    "seeds", ["99999999999999999999", "0-99999999999999999999", "9" * 5000, "18446744073709551616"]
)
def test_a_seed_beyond_the_latent_functions_range_is_one_sentence(snapshot, tmp_path, capsys, seeds):
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", seeds, "--outdir", str(tmp_path / "d"))
    line = assert_one_sentence(code, err, f"seeds must be between 0 and {MAX_SEED} (2**64 - 1)")
    assert len(line) < 200  # a 5000-digit seed is not echoed whole
    assert not (tmp_path / "d").exists()


def test_the_largest_seed_still_generates(snapshot, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", str(MAX_SEED), "--outdir", str(tmp_path))
    assert code == 0, err
    assert seed_files(tmp_path) == [f"seed{MAX_SEED}.png"]


@pytest.mark.parametrize("seeds", ["\u00b2", "\u0663", "1e3", "-5", "3;4"])
def test_seeds_that_are_not_ascii_numbers_are_one_sentence(snapshot, tmp_path, capsys, seeds):
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", seeds, "--out", str(tmp_path / "g.png"))
    assert_one_sentence(code, err, "seeds must look like 0-63 or 3,14,15")


def test_the_installed_command_reports_an_overflowing_seed_without_a_traceback(snapshot, tmp_path):
    command = Path(sys.executable).with_name("scs-gan")
    result = subprocess.run(
        [str(command), "generate", "--snapshot", snapshot, "--seeds", "99999999999999999999", "--out", "g.png"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert_one_sentence(result.returncode, result.stderr, "seeds must be between 0 and")


# ----------------------------------------------------------------------------- 2. many seeds: stream or refuse


@pytest.fixture
def latent_batches(monkeypatch) -> list[int]:
    """The number of seeds of every call to the seed-to-latent function made while generating."""
    sizes: list[int] = []
    real = scs_gan.generate.latents_for_seeds

    def recording(seeds, z_dim, device=None):
        sizes.append(len(seeds))
        return real(seeds, z_dim, device)

    monkeypatch.setattr(scs_gan.generate, "latents_for_seeds", recording)
    return sizes


def test_outdir_is_written_a_batch_at_a_time_and_image_k_still_comes_from_seed_k(
    snapshot, tmp_path, capsys, latent_batches
):
    code, out, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "0-299", "--batch", "64", "--outdir", str(tmp_path / "a")
    )
    assert code == 0, err
    assert "wrote 300 images" in out
    assert seed_files(tmp_path / "a") == [f"seed{k:04d}.png" for k in range(300)]
    assert latent_batches == [64, 64, 64, 64, 44]  # never more latents at once than one batch
    code, _, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "257,3", "--batch", "1", "--outdir", str(tmp_path / "b")
    )
    assert code == 0, err
    for name in ("seed0257.png", "seed0003.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_huge_seed_range_streams_in_flat_memory(snapshot, tmp_path, capsys, monkeypatch):
    """Ten million seeds: the first two batches are written, then Ctrl-C; neither the seeds nor their latents were
    ever listed whole (a list of 10**7 seeds alone would take about 360 MB of Python objects)."""
    sizes: list[int] = []
    real = scs_gan.generate.latents_for_seeds

    def interrupted_after_two_batches(seeds, z_dim, device=None):
        sizes.append(len(seeds))
        if len(seeds) > 16 or len(sizes) > 2:
            raise KeyboardInterrupt
        return real(seeds, z_dim, device)

    monkeypatch.setattr(scs_gan.generate, "latents_for_seeds", interrupted_after_two_batches)
    tracemalloc.start()
    try:
        code, _, err = run(
            capsys,
            "generate",
            "--snapshot",
            snapshot,
            "--seeds",
            "0-9999999",
            "--batch",
            "16",
            "--outdir",
            str(tmp_path),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 130 and err.strip() == "interrupted"
    assert sizes == [16, 16, 16]
    assert seed_files(tmp_path) == [f"seed{k:04d}.png" for k in range(32)]  # whole files only: no temporaries
    assert peak < 50 * 2**20, f"peak of {peak / 2**20:.0f} MB of Python objects"


def test_a_grid_of_too_many_seeds_is_refused_before_any_work(snapshot, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scs_gan.snapshot, "load_generator", lambda *a, **k: pytest.fail("the generator was loaded"))
    out = tmp_path / "grid.png"
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "0-100000000", "--out", str(out))
    assert_one_sentence(code, err, "a grid holds at most 4,096 images", "100,000,001", "--outdir")
    code, _, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "0-3", "--grid", "100x100", "--out", str(out)
    )
    assert_one_sentence(code, err, "--grid 100x100 has more cells than the 4,096")
    code, _, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "0", "--grid", "9" * 5000 + "x1", "--out", str(out)
    )
    assert len(assert_one_sentence(code, err, "more cells than the 4,096 a grid may hold")) < 200
    assert not out.exists()


def test_a_grid_is_filled_a_batch_at_a_time(snapshot, tmp_path, capsys, latent_batches):
    code, _, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "0-9", "--batch", "4", "--out", str(tmp_path / "g.png")
    )
    assert code == 0, err
    assert latent_batches == [4, 4, 2]
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "7", "--outdir", str(tmp_path / "one"))
    assert code == 0, err
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (3 * 32, 4 * 32)
    assert np.array_equal(grid[32:64, 96:128], np.asarray(Image.open(tmp_path / "one" / "seed0007.png")))
    assert not grid[64:, 64:].any()  # cells past the last seed stay black


@pytest.mark.parametrize(
    "args,message",
    [
        (("--seeds", "0-20000", "--frames", "2"), "more than the 10,000 allowed here"),
        (("--seeds", "3,14", "--frames", "1000000000"), "an animation may hold"),
        (
            (
                "--seeds",
                "3,14;1,2,9",
            ),
            "same number of seeds",
        ),
        (
            (
                "--seeds",
                ";",
            ),
            "no seeds given",
        ),
        (("--seeds", "3,14", "--fps", "0"), "--fps must be positive"),
    ],
)
def test_interpolate_refuses_walks_too_large_or_malformed(snapshot, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr(scs_gan.snapshot, "load_generator", lambda *a, **k: pytest.fail("the generator was loaded"))
    code, _, err = run(capsys, "interpolate", "--snapshot", snapshot, *args, "--out", str(tmp_path / "w.gif"))
    assert_one_sentence(code, err, message)
    assert not (tmp_path / "w.gif").exists()


# ---------------------------------------------------------------------------------- 3. existing files in outdir


def test_outdir_refuses_to_replace_existing_files_unless_overwrite(snapshot, tmp_path, capsys):
    outdir = tmp_path / "samples"
    outdir.mkdir()
    (outdir / "seed0002.png").write_text("the user's own file")
    (outdir / "seed0001.png").write_text("the user's own file")
    (outdir / "seed9.png").write_text("not a name generate writes")
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "5,2,0-3", "--outdir", str(outdir))
    assert_one_sentence(code, err, f"{outdir / 'seed0002.png'} already exists", "1 more", "--overwrite")
    assert seed_files(outdir) == ["seed0001.png", "seed0002.png", "seed9.png"]  # nothing written
    assert (outdir / "seed0001.png").read_text() == "the user's own file"

    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "3-5", "--outdir", str(outdir))
    assert code == 0, err  # seeds that meet no existing file are written
    code, _, err = run(
        capsys, "generate", "--snapshot", snapshot, "--seeds", "0-3", "--outdir", str(outdir), "--overwrite"
    )
    assert code == 0, err
    assert Image.open(outdir / "seed0001.png").format == "PNG"
    assert (outdir / "seed9.png").read_text() == "not a name generate writes"


def test_overwrite_is_documented_and_an_outdir_that_is_a_file_is_refused(snapshot, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--help"])
    assert exited.value.code == 0
    assert "--overwrite" in capsys.readouterr().out
    (tmp_path / "f").write_text("x")
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "0", "--outdir", str(tmp_path / "f"))
    assert_one_sentence(code, err, "is a file, not a directory")


# --------------------------------------------------------------------------------- 4. the format the suffix names


@pytest.mark.parametrize(
    "suffix,image_format", [(".png", "PNG"), (".jpg", "JPEG"), (".JPEG", "JPEG"), (".webp", "WEBP")]
)
def test_out_is_written_in_the_format_its_suffix_names(snapshot, tmp_path, capsys, suffix, image_format):
    out = tmp_path / f"grid{suffix}"
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "0-3", "--out", str(out))
    assert code == 0, err
    assert Image.open(out).format == image_format
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "0-3", "--out", str(tmp_path / "ref.png"))
    assert code == 0, err
    pixels, reference = (np.asarray(Image.open(p).convert("L")).astype(int) for p in (out, tmp_path / "ref.png"))
    assert pixels.shape == reference.shape == (64, 64)
    if image_format == "JPEG":
        assert np.abs(pixels - reference).mean() < 4
    else:
        assert np.array_equal(pixels, reference)  # PNG and WebP are lossless


@pytest.mark.parametrize("name", ["grid.bmp", "grid.txt", "grid", "grid.png.gz"])
def test_an_unknown_image_suffix_is_refused_before_any_work(snapshot, tmp_path, capsys, name):
    code, _, err = run(capsys, "generate", "--snapshot", snapshot, "--seeds", "0-3", "--out", str(tmp_path / name))
    assert_one_sentence(code, err, "--out must end in .png, .jpg, .jpeg or .webp", repr(name))
    assert seed_files(tmp_path) == []


@pytest.mark.parametrize("name", ["walk.png", "walk.avi", "walk"])
def test_interpolate_refuses_other_suffixes_than_gif_and_mp4(snapshot, tmp_path, capsys, name):
    code, _, err = run(capsys, "interpolate", "--snapshot", snapshot, "--seeds", "3,4", "--out", str(tmp_path / name))
    assert_one_sentence(code, err, "--out must end in .gif or .mp4", repr(name))
    assert seed_files(tmp_path) == []


def test_interpolate_writes_a_gif(snapshot, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "interpolate",
        "--snapshot",
        snapshot,
        "--seeds",
        "3,4",
        "--frames",
        "3",
        "--out",
        str(tmp_path / "w.GIF"),
    )
    assert code == 0, err
    assert Image.open(tmp_path / "w.GIF").format == "GIF" and Image.open(tmp_path / "w.GIF").n_frames == 4


# ------------------------------------------------------------------------ 5. a directory or a read-only place


@pytest.mark.parametrize("command,name", [("generate", "grid.png"), ("interpolate", "walk.gif"), ("generate", "d")])
def test_out_naming_an_existing_directory_is_one_sentence(snapshot, tmp_path, capsys, command, name):
    (tmp_path / name).mkdir()
    code, _, err = run(capsys, command, "--snapshot", snapshot, "--seeds", "0,1", "--out", str(tmp_path / name))
    assert_one_sentence(code, err, f"--out {tmp_path / name} is a directory")


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """A directory nothing can be created in. chmod makes it so for a normal user; root (as in CI containers)
    ignores the mode, so there the two calls that create entries - ``tempfile.mkstemp`` (every atomic write) and
    ``os.mkdir`` - are made to fail inside it with the PermissionError the kernel gives a normal user."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    if os.geteuid() == 0:
        real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir

        def inside(path) -> bool:
            return Path(path).resolve().is_relative_to(directory.resolve())

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and inside(dir):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        def mkdir(path, *args, **kwargs):
            if inside(Path(path).parent):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "mkdir", mkdir)
    yield directory
    directory.chmod(0o755)


@pytest.mark.parametrize(
    "command,option,target",
    [
        ("generate", "--out", "grid.png"),
        ("generate", "--out", "sub/grid.jpg"),
        ("generate", "--outdir", "."),
        ("generate", "--outdir", "samples"),
        ("interpolate", "--out", "walk.gif"),
    ],
)
def test_writing_into_a_read_only_directory_is_one_sentence(snapshot, read_only_dir, capsys, command, option, target):
    path = read_only_dir / target
    code, _, err = run(capsys, command, "--snapshot", snapshot, "--seeds", "0,1", option, str(path))
    assert_one_sentence(code, err, "cannot write", "Permission denied")
    assert list(read_only_dir.iterdir()) == []
