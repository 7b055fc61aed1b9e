"""Long metric passes show progress, report cache hits, and run each image through Inception once per call."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from scs_gan.data import DataConfig, build_dataset
from scs_gan.metrics import weights as W
from scs_gan.metrics.evaluate import Evaluator
from scs_gan.models import build_generator
from scs_gan.snapshot import save_snapshot
from scs_gan.training.config import RunConfig


def _tiny_generator():
    config = RunConfig()
    config.model.g.channels = 4
    config.data.max_images = 60
    return config, build_generator(config.model, 32, 1)


def test_each_image_goes_through_inception_once_per_call(tmp_path, monkeypatch, capfd, fid_weights_file):
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path))
    config, generator = _tiny_generator()
    evaluator = Evaluator(build_dataset(DataConfig(max_images=24)), load_file(fid_weights_file), "test", progress=False)
    seen = []
    forward = evaluator.features.forward
    monkeypatch.setattr(evaluator.features, "forward", lambda images: seen.append(len(images)) or forward(images))
    z_dim = config.model.z_dim

    together = evaluator.evaluate(generator, z_dim, ["fid8_8", "kid8_8"])
    assert sum(seen) == 8 + 8  # FID and KID share the real and the generated features
    seen.clear()
    # KID only from here: torchmetrics' FID compute (a 2048 x 2048 eigendecomposition) is the slow part
    mixed = evaluator.evaluate(generator, z_dim, ["kid6_full", "kid6_8", "kid4_full"])
    assert sum(seen) == 24 + 6  # the full set serves its 8-subset, the 6 generated images serve N = 4
    seen.clear()
    alone = evaluator.evaluate(generator, z_dim, ["kid6_8", "kid4_full"])  # reals from the disk cache
    assert sum(seen) == 6
    for name in ("kid6_8", "kid4_full"):
        assert mixed[name]["value"] == pytest.approx(alone[name]["value"], rel=1e-4, abs=1e-6)
    assert together["kid8_8"]["real_features_cached"] is False and alone["kid6_8"]["real_features_cached"]
    assert capfd.readouterr().err == ""  # progress=False is silent


def test_metrics_command_shows_progress_and_cache_hits(tmp_path, fid_weights_file):
    config, generator = _tiny_generator()
    snapshot = tmp_path / "snap.safetensors"
    save_snapshot(generator, snapshot, config, {"kimg": 0.0})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCS_GAN_CACHE": str(tmp_path / "cache"), W.ENV_VAR: fid_weights_file}
    args = [sys.executable, "-m", "scs_gan", "metrics", "--snapshot", str(snapshot), "--metrics", "kid12_12"]
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert first.returncode == 0, first.stderr
    assert "Inception features of 12 real images (cached for later runs)" in first.stderr
    assert "generating and scoring 12 images" in first.stderr
    assert re.search(r"12/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(img/s|s/img)\]", first.stderr), first.stderr  # rate, ETA
    assert "cache hit" not in first.stderr
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert second.returncode == 0, second.stderr
    assert "real features: cache hit (12 images" in second.stderr
    assert "Inception features of" not in second.stderr and "generating and scoring 12 images" in second.stderr
