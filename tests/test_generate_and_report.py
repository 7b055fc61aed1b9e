"""Generation by seed, latent walks, the Hub layout, the HTML report (in a real browser) and the trackers."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scs_gan
from scs_gan.errors import UserError
from scs_gan.generate import parse_seeds, slerp, walk_latents
from scs_gan.latents import latents_for_seeds
from scs_gan.models import build_generator
from scs_gan.snapshot import save_snapshot
from scs_gan.training.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "scs_gan", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    config = RunConfig()
    config.model.g.channels = 8
    torch.manual_seed(0)
    generator = build_generator(config.model, 32, 1)
    path = tmp_path_factory.mktemp("snap") / "network-snapshot-000001.safetensors"
    save_snapshot(generator, path, config, {"kimg": 1.0})
    return path


def test_a_long_export_shows_a_bar_with_rate_and_eta(snapshot, tmp_path, capfd):
    """Exporting 50,000 images takes minutes; past its delay the bar counts them against the seeds given."""
    from scs_gan.generate import write_per_seed
    from scs_gan.snapshot import load_generator

    written = write_per_seed(load_generator(snapshot), range(5), tmp_path, batch=2, total=5, bar_delay=0)
    assert written == 5
    assert re.search(r"generating and writing images to .*: .*5/5 \[\d\d:\d\d<\d\d:\d\d", capfd.readouterr().err)


def test_seed_parsing():
    assert parse_seeds("0-3,10,12-13") == [0, 1, 2, 3, 10, 12, 13]
    for bad in ("", "a-b", "5-2", "1;2"):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_image_k_comes_from_seed_k_whatever_the_batch(snapshot, tmp_path):
    first = cli(
        "generate", "--snapshot", str(snapshot), "--seeds", "0-15", "--outdir", str(tmp_path / "a"), "--batch", "16"
    )
    assert first.returncode == 0 and first.stderr == ""  # too short for a progress bar
    assert (
        cli(
            "generate", "--snapshot", str(snapshot), "--seeds", "5,3", "--outdir", str(tmp_path / "b"), "--batch", "1"
        ).returncode
        == 0
    )
    for seed in (3, 5):
        name = f"seed{seed:04d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(list((tmp_path / "a").glob("seed*.png"))) == 16
    result = cli(
        "generate",
        "--snapshot",
        str(snapshot),
        "--seeds",
        "0-15",
        "--grid",
        "2x8",
        "--out",
        str(tmp_path / "grid.png"),
        "--batch",
        "5",
    )
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (64, 256)
    single = np.asarray(Image.open(tmp_path / "a" / "seed0009.png"))
    assert np.array_equal(grid[32:64, 32:64], single)  # seed 9 is row 1, column 1


def test_truncation_moves_images_towards_the_mean(snapshot, tmp_path):
    for trunc in ("1", "0.5", "0"):
        assert (
            cli(
                "generate",
                "--snapshot",
                str(snapshot),
                "--seeds",
                "0-3",
                "--out",
                str(tmp_path / f"t{trunc}.png"),
                "--trunc",
                trunc,
            ).returncode
            == 0
        )
    zero = np.asarray(Image.open(tmp_path / "t0.png")).astype(int)
    assert np.array_equal(zero[:32, :32], zero[32:, 32:])  # psi = 0: every seed gives the mean image
    assert not np.array_equal(*(np.asarray(Image.open(tmp_path / f"t{t}.png")) for t in ("1", "0.5")))


def test_interpolation_gif_frames_and_walk_grid(snapshot, tmp_path):
    out = tmp_path / "walk.gif"
    result = cli("interpolate", "--snapshot", str(snapshot), "--seeds", "3,14,15", "--frames", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    gif = Image.open(out)
    assert gif.n_frames == 2 * 6 + 1 and gif.size == (32, 32)
    looped = tmp_path / "loop.gif"
    assert (
        cli(
            "interpolate",
            "--snapshot",
            str(snapshot),
            "--seeds",
            "3,14,15;1,2,9",
            "--frames",
            "4",
            "--loop",
            "--out",
            str(looped),
        ).returncode
        == 0
    )
    gif = Image.open(looped)
    assert gif.n_frames == 3 * 4 and gif.size == (64, 32)
    latents = walk_latents([3, 14], 128, 4)
    torch.testing.assert_close(latents[0], latents_for_seeds([3], 128)[0])
    torch.testing.assert_close(latents[-1], latents_for_seeds([14], 128)[0])
    a, b = latents_for_seeds([3, 14], 128)
    mid = slerp(a, b, 0.5)
    assert (mid.norm() - (a.norm() + b.norm()) / 2).abs() < 0.2 * a.norm()  # stays on the shell, unlike lerp


@pytest.mark.parametrize(
    "args,message",
    [
        (("--seeds", "0-15", "--grid", "2x2", "--out", "x.png"), "a 2x2 grid holds 4 images"),
        (("--seeds", "0-3", "--out", "x.png", "--trunc", "2"), "--trunc must be between 0 and 1"),
        (("--seeds", "0-3", "--out", "x.png", "--device", "cuda:3"), "no CUDA device"),
    ],
)
def test_generate_errors_are_one_sentence(snapshot, tmp_path, args, message):
    if "cuda:3" in args and torch.cuda.device_count() > 3:
        pytest.skip("this machine has that GPU")
    result = cli("generate", "--snapshot", str(snapshot), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_interpolate_errors(snapshot, tmp_path):
    result = cli("interpolate", "--snapshot", str(snapshot), "--seeds", "3", "--out", str(tmp_path / "w.gif"))
    assert result.returncode == 2 and "at least two seeds" in result.stderr
    result = cli("interpolate", "--snapshot", str(snapshot), "--seeds", "3,4", "--out", str(tmp_path / "w.avi"))
    assert result.returncode == 2 and "must end in .gif or .mp4" in result.stderr


def test_python_api_and_hub_layout(snapshot, tmp_path):
    generator = scs_gan.load_generator(snapshot)
    z = latents_for_seeds(range(4), generator.z_dim)
    images = generator(z)
    assert images.shape == (4, 1, 32, 32) and not generator.training
    saved = scs_gan.save_pretrained(generator, tmp_path / "hub")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    again = scs_gan.load_generator(tmp_path / "hub")
    assert torch.equal(again(z), images)
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["format"] == "scs_gan.generator"
    meta = json.loads((tmp_path / "hub" / "config.json").read_text())
    meta["version"] = 99
    (tmp_path / "hub" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format version 99"):
        scs_gan.load_generator(tmp_path / "hub")
    with pytest.raises(UserError, match="not a saved generator"):
        scs_gan.load_generator(tmp_path)


# ---------------------------------------------------------------------------------------- runs, report


@pytest.fixture(scope="session")  # with the xdist group below: trained once, on one test process
def two_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    env = {"SCS_GAN_CACHE": str(root / "cache")}
    for kind in ("scs", "conv"):
        result = cli(
            "train",
            "--config",
            SMOKE,
            f"train.runs_dir={root}",
            f"model.g.kind={kind}",
            f"model.d.kind={kind}",
            env=env,
        )
        assert result.returncode == 0, result.stderr
    return sorted(p for p in root.iterdir() if p.name[0].isdigit())


@pytest.mark.xdist_group("two_runs")
def test_report_is_self_contained_and_overlays_runs(two_runs, tmp_path):
    # a metric file as training writes it, so the FID plot has something to draw
    floor = {"value": 45.5, "subset": "20 other reals"}
    record = {"metric": "fid20_20", "value": 123.0, "kimg": 2.0, "floor": floor}
    (two_runs[0] / "metric-fid20_20.jsonl").write_text(json.dumps(record) + "\n")
    pr = [
        {"metric": "pr20_20", "value": p, "precision": p, "recall": r, "k": 3, "kimg": k}
        for p, r, k in [(0.2, 0.1, 1.0), (0.6, 0.35, 2.0)]
    ]
    (two_runs[0] / "metric-pr20_20.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pr))
    out = tmp_path / "report.html"
    result = cli("report", *map(str, two_runs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    for title in (
        "Losses",
        "fid20_20 against kimg",
        "Training speed",
        "p of every SCS layer",
        "q of every SCS layer",
        "Samples over time",
        "Precision against recall",
        "pr20_20 against kimg",
    ):
        assert title in page, title
    assert "fid20_20 123.0000 (real-vs-real floor 45.5000)" in page  # the summary table says it with its floor
    assert "pr20_20 precision 0.6000 recall 0.3500 (k=3)" in page
    assert two_runs[0].name in page and two_runs[1].name in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # every image and link is inline
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 8
    Image.open(__import__("io").BytesIO(base64.b64decode(images[0]))).verify()
    assert "<table>" in page and "kimg" in page and "data:text/csv;base64," in page
    single = cli("report", str(two_runs[0]))
    assert single.returncode == 0 and (two_runs[0] / "report.html").is_file()
    bad = cli("report", str(tmp_path))
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt install chromium)")
@pytest.mark.xdist_group("two_runs")
def test_report_renders_in_a_real_headless_browser(two_runs, tmp_path):
    out = tmp_path / "report.html"
    assert cli("report", *map(str, two_runs), "--out", str(out)).returncode == 0
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200)
    assert (pixels < 128).mean() > 0.01 and pixels.std() > 20  # text and plots, not a blank page
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "scs_gan report" in dom and dom.count("<img") >= 8


# ------------------------------------------------------------------------------------------------ trackers


def test_trackers_offline_write_scalars_images_config_and_resume_the_same_run(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {"WANDB_MODE": "offline", "SCS_GAN_CACHE": str(tmp_path / "cache")}
    args = ("train", "--config", SMOKE, f"train.runs_dir={tmp_path / 'runs'}", "train.trackers=[wandb,tensorboard]")
    result = cli(*args, "train.kimg=1", env=env)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "runs").iterdir())
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    run_id = offline[0].name.rsplit("-", 1)[1]
    record = (offline[0] / f"run-{run_id}.wandb").read_bytes()
    for key in (b"train/loss_D", b"p/G.net.0/mean", b"data.name", b"mnist5k"):
        assert key in record, key
    assert list((offline[0] / "files" / "media" / "images").glob("fakes_*.png"))
    events = EventAccumulator(str(run / "tensorboard" / "scs_gan"))
    events.Reload()
    assert "train/loss_D" in events.Tags()["scalars"] and "fakes" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("train/loss_D")][-1] == 1008
    resumed = cli(*args, "--resume", str(run), "train.kimg=2", env=env)
    assert resumed.returncode == 0, resumed.stderr
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert ids == {run_id}  # the resumed run continues the same wandb run


def test_a_tracker_that_is_not_installed_is_a_clear_error(monkeypatch):
    import importlib.util

    from scs_gan.training import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match="asks for wandb, which is not installed"):
        trackers.check_installed(["wandb"])


def test_interpolation_mp4_has_the_gifs_frames(snapshot, tmp_path):
    """The MP4 route (the ``video`` extra, imageio-ffmpeg with its bundled ffmpeg) writes the same walk as the
    GIF, frame for frame, up to the codec's loss, and leaves no temporary file behind."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra is not installed")
    walks = {}
    for suffix in ("gif", "mp4"):
        out = tmp_path / f"walk.{suffix}"
        args = ("interpolate", "--snapshot", str(snapshot), "--seeds", "3,14,15", "--frames", "6", "--out", str(out))
        result = cli(*args)
        assert result.returncode == 0, result.stderr
    gif = Image.open(tmp_path / "walk.gif")
    walks["gif"] = np.stack([np.asarray(gif.seek(i) or gif.convert("RGB")) for i in range(gif.n_frames)])
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "walk.mp4"))
    meta = next(reader)
    assert meta["size"] == (32, 32)
    walks["mp4"] = np.stack([np.frombuffer(f, np.uint8).reshape(32, 32, 3) for f in reader])
    gif, mp4 = (walks[k].astype(float) for k in ("gif", "mp4"))
    assert mp4.shape == gif.shape == (2 * 6 + 1, 32, 32, 3)
    assert np.abs(mp4 - gif).mean() < 8  # lossy, but the same images in the same order
    assert np.abs(mp4[::-1] - gif).mean() > 2 * np.abs(mp4 - gif).mean()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_mp4_without_an_encoder_is_one_sentence(snapshot, tmp_path, monkeypatch):
    import builtins

    from scs_gan.generate import save_animation

    real_import = builtins.__import__

    def no_encoder(name, *args, **kwargs):
        if name == "imageio_ffmpeg":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_encoder)
    expected = r"^writing MP4 needs an encoder: pip install imageio-ffmpeg \(or write a \.gif\)$"
    with pytest.raises(UserError, match=expected):
        save_animation([np.zeros((32, 32, 1), np.uint8)], tmp_path / "walk.mp4")
    assert not list(tmp_path.iterdir())
