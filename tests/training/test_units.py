"""Pieces of training: configs, run directories, EMA, losses, latents, models, snapshots."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import scs_gan
from scs_gan.config import dump_yaml, from_dict, load_yaml, to_dict
from scs_gan.errors import UserError
from scs_gan.images import image_grid
from scs_gan.latents import latents_for_seeds
from scs_gan.models import (
    MinibatchStd,
    ModelConfig,
    Shortcut,
    build_discriminator,
    build_generator,
    count_parameters,
    scs_layers,
)
from scs_gan.training.checkpoint import resolve_resume, verify_checkpoint
from scs_gan.training.config import RunConfig, given_keys, load_config, merge_for_resume
from scs_gan.training.ema import ema_beta, update_ema
from scs_gan.training.losses import d_loss, g_loss, lecam_penalty, mode_seeking_penalty, r1_loss, r1_penalty
from scs_gan.training.rundir import create_run_dir, keep_previous
from scs_gan.training.trainer import apply_step, lr_factor, param_groups, set_learning_rates

REPO = Path(__file__).resolve().parents[2]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        out.update(_flat(value, path) if isinstance(value, dict) else {path: value})
    return out


def test_default_yaml_states_the_defining_choices_with_the_built_in_values():
    """configs/default.yaml is what `scs-gan train` runs: every value it states is the built-in default, and it
    states the choices that define the default run (not an empty file that trivially agrees)."""
    stated = _flat(load_yaml(CONFIGS / "default.yaml"))
    built_in = _flat(to_dict(RunConfig()))
    defining = {"data.name", "data.resolution", "model.z_dim", "model.g.kind", "model.g.channels", "model.d.kind"}
    defining |= {"model.d.channels", "train.kimg", "train.batch", "train.g_lr", "train.d_lr", "metrics.names"}
    assert defining <= set(stated)
    for key, value in stated.items():
        assert value == built_in[key], f"default.yaml says {key}={value!r}, the built-in default is {built_in[key]!r}"
    assert to_dict(load_config(CONFIGS / "default.yaml")) == to_dict(RunConfig())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(config)))) == config


def test_overrides_and_yaml_round_trip(tmp_path):
    config = load_config(CONFIGS / "dcgan.yaml", ["train.batch=128", "model.g.channels=16", "train.betas=[0.0, 0.99]"])
    assert config.train.batch == 128 and config.model.g.channels == 16 and config.train.betas == [0.0, 0.99]
    assert config.model.g.kind == "conv"
    (tmp_path / "c.yaml").write_text(dump_yaml(config))
    assert load_config(tmp_path / "c.yaml") == config


def test_config_file_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid YAML at line 1"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "unknown.yaml").write_text("trian: {kimg: 1}\n")
    with pytest.raises(UserError, match="unknown config key 'trian'; did you mean 'train'"):
        load_config(tmp_path / "unknown.yaml")
    # snapshots are named by image count, so they may be any distance apart
    assert load_config(None, ["train.tick_kimg=0.1", "train.snapshot_ticks=2"]).train.tick_kimg == 0.1
    (tmp_path / "latin1.yaml").write_bytes("train: {desc: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 17"):
        load_yaml(tmp_path / "latin1.yaml")


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.kimg=.nan", "train.kimg must be a finite number"),
        ("train.kimg=.inf", "train.kimg must be a finite number"),
        ("train.g_lr=.nan", "train.g_lr must be a finite number"),
        ("train.pq_lr_mul=.inf", "train.pq_lr_mul must be a finite number"),
        ("train.lr_rampdown=1", "train.lr_rampdown must be in [0, 1)"),
        ("train.kimg=-1", "must be positive"),
        ("train.ema_kimg=-5", "train.ema_kimg must be >= 0"),
        ("train.ema_rampup=-1", "train.ema_rampup positive"),
        ("train.seed=-3", "train.seed must be >= 0"),
        ("model.g.channels=-4", "model.g.channels and model.g.max_channels must be at least 1"),
        ("model.d.max_channels=0", "model.d.channels and model.d.max_channels must be at least 1"),
        ("model.z_dim=0", "model.z_dim must be at least 1"),
        ("model.g.q_init=0", "model.g.q_init must be positive"),
        ("model.d.p_init=0.5", "model.d.p_floor must be >= 0 and model.d.p_init greater than it"),
        ("model.g.gain_lr_mul=0", "model.g.gain_lr_mul must be positive"),
        ("data.in_memory_mb=-1", "data.in_memory_mb must be >= 0"),
        ("metrics.batch=-1", "must be >= 0"),
        ("train.augment=[flip]", "train.augment[0] must be one of"),
        ("train.augment=[cutout,cutout]", "train.augment names a policy twice"),
        ("train.augment_p=1.5", "train.augment_p must be in [0, 1]"),
        ("train.augment_shift=0", "train.augment_shift must be a fraction of the image size in (0, 1)"),
        ("train.augment_shift=1.5", "train.augment_shift must be a fraction of the image size in (0, 1)"),
        ("train.fake_classes=real", "train.fake_classes must be one of 'drawn' | 'batch'"),
        ("train.g_lr=1e38", "times train.pq_lr_mul (10) must stay within float32's range"),
        ("train.ada_target=2", "train.ada_target in [-1, 1]"),
        ("train.ada_kimg=0", "train.ada_kimg positive"),
        ("train.lecam=-0.1", "train.lecam must be >= 0"),
        ("train.lecam_decay=1", "train.lecam_decay in [0, 1)"),
    ],
)
def test_every_number_is_validated_when_loaded(override, message):
    """What training would refuse, loading (and so --dry-run) refuses, in one sentence."""
    with pytest.raises(UserError, match=re.escape(message)) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_run_directories_are_numbered_and_never_reused(tmp_path):
    a = create_run_dir(tmp_path, "x")
    b = create_run_dir(tmp_path, "y z")
    assert (a.name, b.name) == ("00000-x", "00001-y-z")
    b.rmdir()
    a.rmdir()
    (tmp_path / "00007-old").mkdir()
    assert create_run_dir(tmp_path, "x").name == "00008-x"


def test_resolve_resume(tmp_path):
    with pytest.raises(UserError, match="found no checkpoint"):
        resolve_resume("latest", tmp_path)
    run = create_run_dir(tmp_path, "x")
    for n in (100, 200):
        checkpoint = run / "checkpoints" / f"checkpoint-{n:09d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "progress.json").write_text("{}")
    (run / "checkpoints" / ".tmp-checkpoint-000000300").mkdir()  # unfinished: ignored
    latest = run / "checkpoints" / "checkpoint-000000200"
    assert resolve_resume("latest", tmp_path) == latest
    assert resolve_resume(str(run), tmp_path) == latest
    assert resolve_resume(str(run / "checkpoints" / "checkpoint-000000100"), tmp_path).name.endswith("100")
    with pytest.raises(UserError, match="no such run directory"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_ema_half_life_and_rampup():
    assert ema_beta(batch=1000, ema_kimg=1.0, cur_nimg=10**9, rampup=None) == pytest.approx(0.5)
    assert ema_beta(batch=64, ema_kimg=10.0, cur_nimg=640, rampup=0.05) == pytest.approx(0.5 ** (64 / 32))
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.clone()
    update_ema(ema, model, beta=0.25)
    torch.testing.assert_close(ema.weight, 0.25 * before + 0.75 * model.weight)
    bn_ema, bn = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    update_ema(bn_ema, bn, beta=0.9)
    assert torch.equal(bn_ema.running_mean, bn.running_mean)


def test_losses():
    real, fake = torch.tensor([3.0, -1.0]), torch.tensor([0.0, 2.0])
    torch.testing.assert_close(
        d_loss("logistic", real, fake),
        torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean(),
    )
    torch.testing.assert_close(d_loss("hinge", real, fake), torch.tensor((0 + 2) / 2 + (1 + 3) / 2))
    torch.testing.assert_close(g_loss("hinge", fake), torch.tensor(-1.0))
    # relativistic pairs real i with fake i: D wants real above fake, G the reverse; G's real logits are constants
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(d_loss("relativistic", real, fake), (sp(torch.tensor(-3.0)) + sp(torch.tensor(3.0))) / 2)
    fake_g = fake.clone().requires_grad_(True)
    real_g = real.clone().requires_grad_(True)
    loss = g_loss("relativistic", fake_g, real_g)
    torch.testing.assert_close(loss, (sp(torch.tensor(3.0)) + sp(torch.tensor(-3.0))) / 2)
    loss.backward()
    assert real_g.grad is None and fake_g.grad is not None
    with pytest.raises(ValueError, match="real logits"):
        g_loss("relativistic", fake)
    # top-k: only the keep fakes D scores highest count, and only they get gradient
    logits = torch.tensor([0.5, -2.0, 3.0, 1.0], requires_grad=True)
    loss = g_loss("logistic", logits, keep=torch.tensor(2))
    torch.testing.assert_close(loss, (sp(torch.tensor(-3.0)) + sp(torch.tensor(-1.0))) / 2)
    loss.backward()
    assert (logits.grad != 0).tolist() == [False, False, True, True]
    torch.testing.assert_close(g_loss("hinge", logits, keep=torch.tensor(4)), g_loss("hinge", logits))


def test_lecam_penalises_only_logits_past_the_other_sides_average():
    real = torch.tensor([2.0, -3.0], requires_grad=True)
    fake = torch.tensor([0.5, 3.0], requires_grad=True)
    # anchors: reals have averaged 1, fakes -2; a real above -2 and a fake below 1 are pulled back, squared
    loss = lecam_penalty(real, fake, real_anchor=1.0, fake_anchor=-2.0)
    torch.testing.assert_close(loss, torch.tensor((4.0**2 + 0) / 2 + (0.5**2 + 0) / 2))
    loss.backward()
    torch.testing.assert_close(real.grad, torch.tensor([4.0, 0.0]))
    torch.testing.assert_close(fake.grad, torch.tensor([-0.5, 0.0]))


def test_augment_shift_bounds_the_translations_d_sees_in_training(tmp_path):
    """``train.augment_shift`` reaches the augmentation of the training steps: at 1/32 of smoke's 32 x 32 images,
    what D is shown of a one-pixel image is moved by at most one pixel per axis, and by exactly one sometimes."""
    from scs_gan.training import Trainer

    config = load_config(
        CONFIGS / "smoke.yaml",
        [f"train.runs_dir={tmp_path}", "train.batch=8", "train.augment_shift=0.03125", "metrics.names=[]"],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    try:
        dot = torch.zeros(64, 1, 32, 32)
        dot[:, :, 16, 16] = 1.0
        where = torch.stack([(image[0] == 1).nonzero()[0] for image in trainer._augment(dot)]) - 16
        assert where.abs().max().item() == 1
    finally:
        trainer.close()


def test_lecam_averages_start_at_the_first_step_and_follow_the_mean_logits(tmp_path, monkeypatch):
    """The first D step has no averages and no penalty and sets them to its mean logits; every later step is
    penalised against the averages before it, which then move by ``1 - lecam_decay`` towards its own means."""
    import scs_gan.training.trainer as trainer_module
    from scs_gan.training import Trainer

    config = load_config(
        CONFIGS / "smoke.yaml",
        [f"train.runs_dir={tmp_path}", "train.batch=8", "train.lecam=0.5", "train.lecam_decay=0.9", "metrics.names=[]"],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    means, anchors_used = [], []
    d_losses, penalty = trainer._d_losses, trainer_module.lecam_penalty

    def recording_d_losses(reals, fakes, *classes):
        loss, real_logits, fake_logits = d_losses(reals, fakes, *classes)
        means.append([real_logits.mean().item(), fake_logits.mean().item()])
        return loss, real_logits, fake_logits

    def recording_penalty(real_logits, fake_logits, real_anchor, fake_anchor):
        anchors_used.append([real_anchor, fake_anchor])
        return penalty(real_logits, fake_logits, real_anchor, fake_anchor)

    monkeypatch.setattr(trainer, "_d_losses", recording_d_losses)
    monkeypatch.setattr(trainer_module, "lecam_penalty", recording_penalty)
    try:
        assert trainer.progress.lecam is None
        trainer.step()
        assert anchors_used == [] and trainer.progress.lecam == pytest.approx(means[0], rel=1e-6)
        first = list(trainer.progress.lecam)
        trainer.step()
        assert anchors_used == [first]
        expected = [0.9 * a + 0.1 * m for a, m in zip(first, means[1], strict=True)]
        assert trainer.progress.lecam == pytest.approx(expected, rel=1e-6)
    finally:
        monkeypatch.undo()
        trainer.close()


def test_mode_seeking_is_the_inverse_image_to_code_distance_ratio_of_consecutive_pairs():
    fakes = torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, 2.0], [2.0, 2.0]], requires_grad=True)
    z = torch.tensor([[0.0], [2.0], [1.0], [2.0]])
    # image distances |(-1, -3)| = 2 and 0 (mean over pairs and pixels: 1), code distances 2 and 1 (mean 1.5)
    penalty = mode_seeking_penalty(fakes, z, eps=0.0)
    torch.testing.assert_close(penalty, torch.tensor(1.5))
    penalty.backward()
    assert fakes.grad[0].sum() > 0 > fakes.grad[1].sum()  # the first pair is pushed apart


@pytest.mark.parametrize("share", [False, True])
def test_mode_seeking_pairs_each_class_and_adds_its_term_to_g_only(tmp_path, monkeypatch, share):
    """With ``train.mode_seeking`` the fakes come in pairs of codes of one class, and the G step's loss gains
    the weighted term on the fakes it generated (or, with shared fakes, on the D step's); odd micro-batches are
    refused."""
    import scs_gan.training.trainer as trainer_module
    from scs_gan.training import Trainer

    config = load_config(
        CONFIGS / "smoke.yaml",
        [
            f"train.runs_dir={tmp_path}",
            "train.batch=8",
            "train.mode_seeking=0.5",
            f"train.share_fakes={str(share).lower()}",
            "metrics.names=[]",
        ],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    calls = []
    penalty = trainer_module.mode_seeking_penalty

    def recording(fakes, z):
        value = penalty(fakes, z)
        calls.append((fakes.detach().clone(), z.clone(), value.detach()))
        return value

    monkeypatch.setattr(trainer_module, "mode_seeking_penalty", recording)
    g_losses = []
    g_loss_of = trainer._g_loss

    def recording_g_loss(*args):
        g_losses.append(g_loss_of(*args).detach())
        return g_losses[-1]

    monkeypatch.setattr(trainer, "_g_loss", recording_g_loss)
    try:
        z, classes = trainer._z()
        assert trainer.conditional and torch.equal(classes[0::2], classes[1::2])
        assert not torch.equal(z[0::2, 1:], z[1::2, 1:])
        losses, _ = trainer.step()
        assert len(calls) == len(g_losses) == trainer.accum == 1  # once per G micro-batch, never in the D step
        fakes, codes, value = calls[0]
        assert torch.equal(codes[0::2, 0], codes[1::2, 0]) and fakes.shape[0] == 8
        assert losses["loss_G"] == pytest.approx(float(g_losses[0] + 0.5 * value), rel=1e-5)
    finally:
        monkeypatch.undo()
        trainer.close()
    with pytest.raises(UserError, match="mode_seeking must be >= 0"):
        load_config(None, ["train.mode_seeking=-1"]).validate()
    odd = load_config(CONFIGS / "smoke.yaml", [f"train.runs_dir={tmp_path}", "train.batch=7", "train.mode_seeking=1"])
    with pytest.raises(UserError, match="7 images are not pairs"):
        Trainer(odd)


def test_topk_keeps_the_decayed_fraction_of_each_micro_batch(tmp_path):
    from scs_gan.training import Trainer

    config = load_config(
        CONFIGS / "smoke.yaml",
        [f"train.runs_dir={tmp_path}", "train.batch=8", "train.g_topk=0.5", "train.g_topk_decay=0.5"],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    try:
        size = len(trainer.dataset)
        for shown, expected in ((0, 8), (size, 4), (3 * size, 4)):  # 8 * max(0.5, 0.5 ** epochs)
            trainer.progress.cur_nimg = shown
            assert int(trainer._topk_keep()) == expected
        trainer.progress.cur_nimg = 0
        losses, _ = trainer.step()
        assert math.isfinite(losses["loss_G"])
    finally:
        trainer.close()
    with pytest.raises(UserError, match="g_topk"):
        load_config(None, ["train.g_topk=0"]).validate()


def test_adaptive_augmentation_is_refused_with_the_relativistic_loss():
    load_config(None, ["train.loss=relativistic"]).validate()
    with pytest.raises(UserError, match="relativistic loss leaves undefined"):
        load_config(None, ["train.loss=relativistic", "train.ada_target=0.6"]).validate()
    x = torch.randn(4, 1, 2, 2, requires_grad=True)
    logits = (x * 3).sum(dim=[1, 2, 3])
    torch.testing.assert_close(r1_penalty(logits, x), torch.tensor(36.0))  # |grad|^2 = 4 * 9
    torch.testing.assert_close(r1_penalty((x * 3).sum(dim=[1, 2, 3]), x, scale=1024.0), torch.tensor(36.0))
    # lazy R1: gamma / 2 * penalty, times the interval so that the average weight does not depend on it
    weighted, penalty = r1_loss((x * 3).sum(dim=[1, 2, 3]), x, gamma=0.5, interval=16)
    torch.testing.assert_close(penalty, torch.tensor(36.0))
    torch.testing.assert_close(weighted, torch.tensor(36.0 * 0.25 * 16))


def test_latents_depend_on_their_seed_only():
    a = latents_for_seeds([5, 6, 7], 8)
    b = latents_for_seeds([7], 8)
    assert torch.equal(a[2], b[0])
    assert torch.equal(latents_for_seeds(range(3), 8), latents_for_seeds([0, 1, 2], 8))


@pytest.mark.parametrize("kind", ["scs", "cosine", "conv"])
@pytest.mark.parametrize("resolution,channels", [(32, 1), (64, 3)])
def test_networks_for_every_kind_resolution_and_channels(kind, resolution, channels):
    model = ModelConfig()
    model.g.kind = model.d.kind = kind
    model.g.channels = model.d.channels = 8
    g, d = build_generator(model, resolution, channels), build_discriminator(model, resolution, channels)
    images = g(torch.randn(2, model.z_dim))
    assert images.shape == (2, channels, resolution, resolution) and images.abs().max() <= 1
    assert d(images).shape == (2,)
    assert (len(scs_layers(g)) > 0) == (kind != "conv")
    assert count_parameters(g) > 0


def test_same_topology_across_kinds():
    counts = {}
    for kind in ("scs", "conv"):
        model = ModelConfig()
        model.g.kind = model.d.kind = kind
        g = build_generator(model, 32, 1)
        counts[kind] = [tuple(m.weight.shape) for m in g.modules() if hasattr(m, "weight") and m.weight.dim() == 4]
    assert counts["scs"] == counts["conv"]


def test_maxabspool_discriminator_and_bad_resolution():
    model = ModelConfig()
    model.d.downsample = "maxabspool"
    d = build_discriminator(model, 32, 1)
    assert d(torch.randn(2, 1, 32, 32)).shape == (2,)
    with pytest.raises(UserError, match="power of two"):
        build_generator(model, 48, 1)


@pytest.mark.parametrize("kind", ["scs", "cosine"])
def test_a_linear_head_gives_an_unbounded_logit_and_trains_every_parameter(kind):
    model = ModelConfig()
    model.d.kind, model.d.channels = kind, 8
    cosine = build_discriminator(model, 32, 1)
    model.d.head = "linear"
    linear = build_discriminator(model, 32, 1)
    images = torch.randn(4, 1, 32, 32)
    # the cosine head: an SCS/cosine layer times a gain, so |logit - bias| <= gain
    gain = cosine.net[-1]
    assert ((cosine(images) - gain.bias).abs() <= gain.gain.abs() + 1e-6).all()
    # the linear head: a k4 convolution with a bias on the same 4x4 features, one SCS layer fewer
    head = linear.net[-1]
    assert isinstance(head, torch.nn.Conv2d) and head.bias is not None and head.kernel_size == (4, 4)
    assert len(scs_layers(linear)) == len(scs_layers(cosine)) - 1
    with torch.no_grad():
        before = linear(images) - head.bias
        head.weight.mul_(100.0)
        assert torch.allclose(linear(images) - head.bias, 100.0 * before, rtol=1e-4, atol=1e-5)
    linear(images).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in linear.parameters())


@pytest.mark.parametrize("n,group,groups", [(8, 4, 2), (6, 4, 2), (5, 4, 5), (3, 8, 1)])
def test_minibatch_std_appends_each_groups_spread(n, group, groups):
    x = torch.randn(n, 3, 4, 4, requires_grad=True)
    y = MinibatchStd(group)(x)
    assert y.shape == (n, 4, 4, 4) and torch.equal(y[:, :3], x)
    size = n // groups  # images per group; image i is in group i mod groups
    for k in range(groups):
        members = x[k::groups]
        assert members.shape[0] == size
        expected = members.std(dim=0, unbiased=False).mean() if size > 1 else torch.tensor(1e-4)
        assert torch.allclose(y[k::groups, 3], expected.expand(size, 4, 4), atol=1e-5)
    y[:, 3].sum().backward()
    assert x.grad is not None and (x.grad.abs().sum() > 0) == (size > 1)


def test_minibatch_std_is_small_for_a_collapsed_batch_and_in_every_kind_of_discriminator():
    same = torch.randn(1, 8, 4, 4).repeat(8, 1, 1, 1)
    assert MinibatchStd(4)(same)[:, 8].max() < 1e-3
    for kind in ("scs", "cosine", "conv"):
        model = ModelConfig()
        model.d.kind, model.d.channels, model.d.mbstd_group = kind, 8, 4
        d = build_discriminator(model, 32, 1)
        assert any(isinstance(m, MinibatchStd) for m in d.modules())
        assert d(torch.randn(6, 1, 32, 32)).shape == (6,)
    with pytest.raises(UserError, match="mbstd_group"):
        load_config(None, ["model.d.mbstd_group=-1"]).model.validate()


@pytest.mark.parametrize("kind", ["scs", "cosine", "conv"])
def test_skip_discriminator_adds_a_linear_shortcut_to_each_downsampling_layer(kind):
    model = ModelConfig()
    model.d.kind, model.d.channels = kind, 8
    plain = build_discriminator(model, 32, 1)
    model.d.skip = True
    torch.manual_seed(0)
    skip = build_discriminator(model, 32, 1)
    shortcuts = [m for m in skip.modules() if isinstance(m, Shortcut)]
    # 1 -> 8, 8 -> 16, 16 -> 32 channels over the three halvings; 1x1 weights only, no bias
    assert [m.shortcut.weight.shape[:2] for m in shortcuts] == [(8, 1), (16, 8), (32, 16)]
    assert count_parameters(skip) - count_parameters(plain) == 8 * 1 + 16 * 8 + 32 * 16
    assert not any(isinstance(m, Shortcut) for m in plain.modules())  # off by default: the DCGAN topology
    x = torch.randn(5, 1, 32, 32)
    block = shortcuts[0]
    expected = block.block(x) + torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), block.shortcut.weight)
    assert torch.allclose(block(x), expected / 2**0.5, atol=1e-6)
    logits = skip(x.requires_grad_(True))
    assert logits.shape == (5,)
    logits.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in skip.parameters() if p.requires_grad)
    assert load_config(None, ["model.d.skip=true"]).model.d.skip is True


@pytest.mark.parametrize("kind", ["scs", "cosine", "conv"])
def test_extra_generator_layers_add_one_k3_layer_per_named_resolution(kind):
    def sizes(g):  # spatial size after each resampling layer, and its kernel
        out, hooks = [], []
        for m in g.modules():
            if isinstance(m, torch.nn.ConvTranspose2d) or type(m).__name__.endswith("Transpose2d"):
                hooks.append(m.register_forward_hook(lambda m, i, o: out.append((o.shape[-1], m.kernel_size[0]))))
        g(torch.randn(2, 16))
        for h in hooks:
            h.remove()
        return out

    model = ModelConfig(z_dim=16)
    model.g.kind, model.g.channels = kind, 8
    plain = build_generator(model, 32, 1)
    assert sizes(plain) == [(4, 4), (8, 4), (16, 4), (32, 4)]
    model.g.extra_layers_at = [4, 16]
    deeper = build_generator(model, 32, 1)
    assert sizes(deeper) == [(4, 4), (4, 3), (8, 4), (16, 4), (16, 3), (32, 4)]
    # each extra layer keeps the width: 32 -> 32 at 4x4 and 8 -> 8 at 16x16, 3x3 taps, then per layer
    # p per channel and one q (scs), one q (cosine), or batch norm's gain and bias per channel (conv)
    extra = count_parameters(deeper) - count_parameters(plain)
    per_layer = {"scs": (1, 1), "cosine": (0, 1), "conv": (2, 0)}[kind]  # (per channel, per layer)
    assert extra == 32 * 32 * 9 + 8 * 8 * 9 + per_layer[0] * (32 + 8) + per_layer[1] * 2
    images = deeper(torch.randn(3, 16))
    assert images.shape == (3, 1, 32, 32) and images.abs().max() <= 1
    images.square().mean().backward()
    assert all(p.grad is not None for p in deeper.parameters() if p.requires_grad)
    for bad, match in (("[32]", "hidden resolutions"), ("[4,4]", "twice"), ("[true]", "must be an integer")):
        with pytest.raises(UserError, match=match):
            config = load_config(None, [f"model.g.extra_layers_at={bad}"])
            config.model.validate()
            build_generator(config.model, 32, 1)


@pytest.mark.parametrize("kind", ["scs", "cosine", "conv"])
def test_skip_generator_sums_an_image_from_every_resolution(kind):
    model = ModelConfig(z_dim=16)
    model.g.kind, model.g.channels = kind, 8
    plain = build_generator(model, 32, 1)
    model.g.skip = True
    skip = build_generator(model, 32, 1)
    # one 1x1 layer per hidden resolution (4, 8, 16 with widths 32, 16, 8) to the one image channel: its weights,
    # plus an exponent and a norm floor (scs), a norm floor (cosine) or a bias (conv) per layer
    per_layer = {"scs": 2, "cosine": 1, "conv": 1}[kind]
    assert count_parameters(skip) - count_parameters(plain) == 32 + 16 + 8 + 3 * per_layer
    skip.load_state_dict(plain.state_dict(), strict=False)  # the shared layers, so only the skips differ
    z = torch.randn(3, 16)
    images = skip(z)
    assert images.shape == (3, 1, 32, 32) and images.abs().max() <= 1
    assert not torch.allclose(images, plain(z))

    # the sum, rebuilt by hand: each resolution's image upsampled bilinearly into the next one's
    captured = []
    hooks = [m.register_forward_hook(lambda m, i, o: captured.append(o)) for m in skip.to_image]
    last = skip.net[len(skip.net) - (3 if kind != "conv" else 2)]  # the k4 s2 layer to the image
    hooks.append(last.register_forward_hook(lambda m, i, o: captured.append(o)))
    images = skip(z)
    for h in hooks:
        h.remove()
    assert [c.shape[-1] for c in captured] == [4, 8, 16, 32]
    total = captured[0]
    for part in captured[1:]:
        total = part + torch.nn.functional.interpolate(total, size=part.shape[-2:], mode="bilinear")
    tail = skip.net[len(skip.net) - (2 if kind != "conv" else 1) :]  # gain and tanh, or tanh
    torch.testing.assert_close(images, tail(total))

    images.square().mean().backward()
    assert all(p.grad is not None for p in skip.parameters() if p.requires_grad)
    assert load_config(None, ["model.g.skip=true"]).model.g.skip is True


def test_image_grid_layout():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, 0.0)])
    grid = image_grid(images, columns=2)
    assert grid.shape == (4, 4, 1)
    assert grid[0, 0, 0] == 0 and grid[0, 2, 0] == 255 and grid[2, 0, 0] == 128 and grid[2, 2, 0] == 0


def test_resume_accepts_only_changes_that_keep_the_maths(tmp_path):
    saved = load_config(CONFIGS / "smoke.yaml")
    overrides = ["train.kimg=9", "metrics.names=[fid20_20]"]
    merged = merge_for_resume(saved, load_config(CONFIGS / "smoke.yaml", overrides), given_keys(None, overrides))
    assert merged.train.kimg == 9 and merged.metrics.names == ["fid20_20"]
    assert merged.model == saved.model
    for bad, message in [("model.g.channels=8", r"model\.g\.channels cannot change"), ("train.g_lr=0.0003", r"g_lr")]:
        with pytest.raises(UserError, match=message):
            merge_for_resume(saved, load_config(CONFIGS / "smoke.yaml", [bad]), given_keys(None, [bad]))


def test_resume_honours_an_option_equal_to_its_default():
    """A run saved with kimg 5 and resumed with train.kimg=200 (the built-in default) trains to 200."""
    saved = load_config(None, ["train.kimg=5", "metrics.every_ticks=3"])
    default_kimg = RunConfig().train.kimg
    overrides = [f"train.kimg={default_kimg:g}", "metrics.every_ticks=0"]
    merged = merge_for_resume(saved, load_config(None, overrides), given_keys(None, overrides))
    assert merged.train.kimg == default_kimg and merged.metrics.every_ticks == 0
    # a maths option given with its default value is refused just the same when the run used another
    saved_lr = load_config(None, ["train.g_lr=0.0003"])
    lr = [f"train.g_lr={RunConfig().train.g_lr}"]
    with pytest.raises(UserError, match=r"train\.g_lr cannot change when resuming \(the run used 0\.0003"):
        merge_for_resume(saved_lr, load_config(None, lr), given_keys(None, lr))
    # options that were not given keep the saved values, even where they differ from the defaults
    assert merge_for_resume(saved_lr, RunConfig(), set()).train.g_lr == 0.0003


def test_resume_with_the_default_config_keeps_the_classes_auto_resolved_to():
    """A run saved with ``model.num_classes`` resolved from ``auto`` to 10 resumes with configs/default.yaml
    (which says ``auto``) or from Python with no keys named; a number other than the saved one is refused."""
    saved = load_config(None, ["model.num_classes=10"])
    default = CONFIGS / "default.yaml"
    assert merge_for_resume(saved, load_config(default), given_keys(default, [])).model.num_classes == 10
    assert merge_for_resume(saved, RunConfig(), None).model.num_classes == 10
    with pytest.raises(UserError, match=r"model\.num_classes cannot change when resuming \(the run used 10"):
        merge_for_resume(saved, load_config(None, ["model.num_classes=0"]), {"model.num_classes"})


def test_given_keys_come_from_the_file_and_the_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {kimg: 3, batch: 32}\nmodel: {g: {channels: 8}}\n")
    keys = given_keys(tmp_path / "c.yaml", ["train.seed=4", "metrics.names=[]"])
    assert keys == {"train.kimg", "train.batch", "model.g.channels", "train.seed", "metrics.names"}


def test_p_and_q_get_their_own_learning_rate():
    model = ModelConfig()
    g = build_generator(model, 32, 1)
    groups = param_groups(g, 2e-4, 20.0)
    assert groups[0]["lr"] == 2e-4 and groups[1]["lr"] == pytest.approx(4e-3)
    names = {id(p): n for n, p in g.named_parameters()}
    assert all(names[id(p)].endswith(("p_raw", "q_raw")) for p in groups[1]["params"])
    assert sum(len(gr["params"]) for gr in groups) == len(list(g.parameters()))
    conv = ModelConfig()
    conv.g.kind = "conv"
    assert len(param_groups(build_generator(conv, 32, 1), 2e-4, 20.0)) == 1


def test_the_learning_rate_ramp_down():
    assert [lr_factor(n, 10, 0.0) for n in (0, 5000, 9999)] == [1.0, 1.0, 1.0]
    assert [lr_factor(n, 10, 0.5) for n in (0, 5000, 7500, 10000)] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert lr_factor(12000, 10, 0.5) == 0.0  # past the end (a shortened run) stays at zero, never negative


def test_a_run_with_a_ramp_down_steps_at_the_scheduled_rates(tmp_path):
    """Both optimisers (every parameter group, p/q included) follow the schedule; a run without one keeps
    its rates, and a checkpoint from before the schedule existed (no base rate saved) keeps its own rate."""
    from scs_gan.training import Trainer

    overrides = [f"train.runs_dir={tmp_path}", "train.batch=8", "train.kimg=0.08", "metrics.names=[]"]
    config = load_config(REPO / "configs" / "smoke.yaml", [*overrides, "train.lr_rampdown=0.5", "train.pq_lr_mul=3"])
    trainer = Trainer(config)
    trainer.log.stream = None
    try:
        seen = []
        for _ in range(10):
            trainer.step()
            seen.append([g["lr"] for opt in (trainer.opt_D, trainer.opt_G) for g in opt.param_groups])
        base = [config.train.d_lr, config.train.d_lr * 3, config.train.g_lr, config.train.g_lr * 3]
        # step k starts at image 8k of 80: full rate up to image 40, then 1 - (8k/80 - 0.5) / 0.5
        for k, rates in enumerate(seen):
            assert rates == pytest.approx([b * min(1.0, (1 - 8 * k / 80) / 0.5) for b in base])
        for group in trainer.opt_G.param_groups:
            del group["base_lr"]  # as loaded from an older checkpoint
            group["lr"] = 1e-4
        set_learning_rates(trainer.opt_G, 1.0)
        assert [g["lr"] for g in trainer.opt_G.param_groups] == [1e-4, 1e-4]
    finally:
        trainer.close()


def test_a_skipped_fp16_step_backs_the_gradient_scale_off():
    """A non-finite loss (an overflowing R1 penalty, say) skips the step before the scaler sees it; the scale
    must still fall, or the same overflow repeats at the same scale forever."""
    layer = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.Adam(layer.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(layer(torch.ones(1, 3)).sum() * float("inf")).backward()  # as accelerator.backward does
    apply_step(optimizer, False, scaler)
    assert scaler.get_scale() == 512.0
    assert all(p.grad is None for p in layer.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters(), strict=True))
    apply_step(optimizer, False, scaler)
    assert scaler.get_scale() == 256.0
    layer(torch.ones(1, 3)).sum().backward()
    apply_step(optimizer, True, None)  # without a scaler (fp32/bf16) a good step just steps
    assert not all(torch.equal(a, p) for a, p in zip(before, layer.parameters(), strict=True))


EMA_UNDER_BF16 = """
import sys, torch
from scs_gan.latents import latents_for_seeds
from scs_gan.models import build_generator
from scs_gan.training import Trainer, load_config
config = load_config(sys.argv[1], [f"train.runs_dir={sys.argv[2]}", "train.mixed_precision=bf16"])
trainer = Trainer(config)
assert "forward" not in vars(trainer.G_ema), "the EMA copy runs a patched (autocast) forward"
z = latents_for_seeds(range(4), config.model.z_dim)
plain = build_generator(config.model, 32, 1).eval()
plain.load_state_dict(trainer.G_ema.state_dict())
with torch.no_grad():
    out = trainer.G_ema(z)
    assert out.dtype == torch.float32 and torch.equal(out, plain(z)), "the EMA copy is not the float32 network"
trainer.close()
print("ok")
"""


def test_the_ema_generator_runs_in_float32_under_bf16_training(tmp_path):
    """The EMA copy is taken before Accelerate wraps G's forward in autocast, so training-time samples and
    metrics see the same network that `scs-gan metrics` loads from the snapshot. (A fresh process: Accelerate
    allows one mixed-precision setting per process.)"""
    cmd = [sys.executable, "-c", EMA_UNDER_BF16, str(CONFIGS / "smoke.yaml"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_save_at_an_image_count_already_saved_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "network-snapshot-000001024.safetensors"
    assert keep_previous(path) is None
    path.write_text("first")
    assert keep_previous(path) == tmp_path / "network-snapshot-000001024.safetensors.replaced-1"
    path.write_text("second")
    assert keep_previous(path).name.endswith(".replaced-2")
    assert not path.exists()
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["first", "second"]


def test_a_training_step_reads_the_device_once_per_phase(tmp_path, monkeypatch):
    """Losses, the augmentation statistic, gradient finiteness and the stop signal of each phase come back in
    one read (a synchronisation on a GPU): two reads per step, none elsewhere in the trainer, with R1 and
    adaptive augmentation on."""
    from scs_gan.training import Trainer

    config = load_config(
        REPO / "configs" / "smoke.yaml",
        [
            f"train.runs_dir={tmp_path}",
            "train.batch=8",
            "train.r1_gamma=1",
            "train.r1_interval=1",
            "train.ada_target=0.6",
            "train.augment_p=0.5",
            "train.lecam=0.3",
            "metrics.names=[]",
        ],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    trainer.step()  # LeCam's averages exist from the second step on
    reads: list[str] = []
    package = str(Path(scs_gan.__file__).parent)

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(package):
                reads.append(f"{name} in {Path(caller).name}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    try:
        losses, _ = trainer.step()
        assert reads == ["tolist in trainer.py", "tolist in trainer.py"]
        assert all(math.isfinite(losses[k]) for k in ("loss_D", "loss_G", "r1"))
    finally:
        monkeypatch.undo()
        trainer.close()


@pytest.mark.parametrize("classes", [0, 10], ids=["unconditional", "conditional"])
def test_shared_fakes_train_exactly_as_regenerating_the_same_latents(tmp_path, monkeypatch, classes):
    """``train.share_fakes``: one G forward per micro-batch and step, and the same updates as the two-forward
    step given the same latents in both phases (two accumulated micro-batches, R1 on every other step); a
    conditional GAN's G phase scores the shared fakes as the classes they were made for."""
    from scs_gan.training import Trainer

    overrides = [
        f"train.runs_dir={tmp_path}",
        "train.batch=8",
        "train.batch_gpu=4",
        "metrics.names=[]",
        "train.r1_gamma=1",
        "train.r1_interval=2",
        f"model.num_classes={classes}",
    ]
    latents = [torch.randn(4, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    params, forwards = {}, {}
    for share in (False, True):  # one after the other: both draw their augmentations from the global RNG
        config = load_config(REPO / "configs" / "smoke.yaml", [*overrides, f"train.share_fakes={str(share).lower()}"])
        trainer = Trainer(config)
        trainer.log.stream = None
        calls = iter(range(10**6))

        def index(c=calls, share=share) -> int:
            # shared: each step draws latents 2k, 2k+1 once; else the G phase draws the D phase's two again
            return next(c) if share else (n := next(c)) // 4 * 2 + n % 2

        monkeypatch.setattr(trainer, "_z", lambda _real_classes, t=trainer: (z := latents[index()], t.classes_of(z)))
        forwards[share] = []
        trainer.G.register_forward_hook(lambda *_, f=forwards[share]: f.append(1))
        try:
            for _ in range(4):
                trainer.step()
            params[share] = {
                f"{m}.{k}": v.detach().clone() for m in ("G", "D") for k, v in getattr(trainer, m).named_parameters()
            }
        finally:
            trainer.close()
    assert len(forwards[False]) == 4 * 2 * 2 and len(forwards[True]) == 4 * 2
    for name, value in params[False].items():
        torch.testing.assert_close(params[True][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_saved_config_without_a_later_option_keeps_the_maths_it_trained_with(tmp_path):
    """A run saved before ``train.lr_rampdown``, ``train.share_fakes``, ``train.mode_seeking``, ``model.num_classes``
    or ``model.g.class_mod``/``latent_mod`` existed resumes (and is recorded) with constant rates, two G forwards, no
    classes and no modulation, not with today's defaults; a saved value is honoured."""
    from scs_gan.training.config import load_run_config

    data = to_dict(RunConfig())
    del data["train"]["lr_rampdown"], data["train"]["share_fakes"], data["train"]["mode_seeking"]
    del data["train"]["augment_shift"], data["train"]["fake_classes"], data["train"]["pq_lr_mul"]
    del data["model"]["d"]["p_init_max"]
    del data["model"]["num_classes"], data["model"]["g"]["class_mod"], data["model"]["g"]["latent_mod"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    old = load_run_config(tmp_path)
    assert old.train.lr_rampdown == 0.0 and old.train.share_fakes is False and old.train.mode_seeking == 0.0
    assert old.train.augment_shift == 0.125 and old.train.fake_classes == "drawn"
    assert old.train.pq_lr_mul == 1.0 and old.model.d.p_init_max is None  # one p0 per layer, at the weights' rate
    assert old.model.num_classes == 0  # unconditional before model.num_classes existed
    assert old.model.g.class_mod is False and old.model.g.latent_mod is False
    data["train"].update(lr_rampdown=0.25, share_fakes=True, mode_seeking=0.5, augment_shift=0.25, pq_lr_mul=3.0)
    data["model"]["d"].update(p_init_max=2.0)
    data["model"].update(num_classes=10)
    data["model"]["g"].update(class_mod=True, latent_mod=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    new = load_run_config(tmp_path)
    assert new.train.lr_rampdown == 0.25 and new.train.share_fakes is True and new.model.num_classes == 10
    assert new.train.mode_seeking == 0.5 and new.train.augment_shift == 0.25
    assert new.train.pq_lr_mul == 3.0 and new.model.d.p_init_max == 2.0
    assert new.model.g.class_mod is True and new.model.g.latent_mod is True


def test_rescaled_scs_weights_change_no_output_and_training_keeps_them_at_the_rms(tmp_path):
    from scs_gan.models import rescale_scs_weights
    from scs_gan.training import Trainer

    torch.manual_seed(0)
    model = ModelConfig(z_dim=16)
    model.g.channels = model.d.channels = 8
    g, d = build_generator(model, 32, 1), build_discriminator(model, 32, 1)
    z, x = torch.randn(4, 16), torch.rand(4, 1, 32, 32) * 2 - 1
    before = g(z), d(x)
    rescale_scs_weights(g, 0.3)
    rescale_scs_weights(d, 0.01)
    # the same up to the eps inside the norms (sqrt(sum w ** 2 + eps)), which the scale changes the share of
    assert torch.allclose(g(z), before[0], atol=1e-4) and torch.allclose(d(x), before[1], atol=1e-4)
    for net, rms in ((g, 0.3), (d, 0.01)):
        assert all(
            math.isclose(w.weight.square().mean().sqrt().item(), rms, rel_tol=1e-5) for w in scs_layers(net).values()
        )

    config = load_config(
        CONFIGS / "smoke.yaml", [f"train.runs_dir={tmp_path}", "train.batch=8", "train.scs_weight_rms=0.05"]
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    try:
        start = {n: w.weight.detach().clone() for n, w in scs_layers(trainer.G).items()}
        for _ in range(3):
            trainer.step()
        for net in (trainer.G, trainer.D, trainer.G_ema):
            for layer in scs_layers(net).values():
                assert math.isclose(layer.weight.square().mean().sqrt().item(), 0.05, rel_tol=1e-4)
        assert any(not torch.equal(start[n], w.weight) for n, w in scs_layers(trainer.G).items())  # it trains
    finally:
        trainer.close()
    with pytest.raises(UserError, match="scs_weight_rms"):
        load_config(None, ["train.scs_weight_rms=0"]).validate()


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), float("-inf")])
def test_the_gradient_finiteness_check_sees_any_bad_value_and_changes_nothing(bad):
    from scs_gan.training.trainer import _grads_finite

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 3, bias=False), torch.nn.Linear(2, 3))
    for i, param in enumerate(net.parameters()):
        param.grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(i))
        param.grad.view(-1)[0] = -0.0
    net[1].weight.grad = None  # a parameter without a gradient is skipped
    if bad is not None:
        net[2].weight.grad[1, 0] = bad
    before = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    finite = _grads_finite(net)
    assert finite.dtype == torch.bool and finite.shape == () and bool(finite) == (bad is None)
    after = [p.grad for p in net.parameters() if p.grad is not None]
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(torch.signbit(a), torch.signbit(b))
    net.double()  # float64 gradients take the per-parameter path
    assert net[2].weight.grad.dtype == torch.float64
    assert bool(_grads_finite(net)) == (bad is None)


def test_lookahead_pulls_both_networks_back_every_k_steps_and_resumes_exactly(tmp_path, monkeypatch):
    """``train.lookahead_k``: after every k-th step the weights of G and D become slow + alpha (fast - slow),
    where slow are the weights after the previous sync, and nothing happens in between; a checkpoint taken in
    the middle of a cycle keeps the slow weights, so the resumed run ends bit for bit where the uninterrupted
    one does."""
    from scs_gan.training import Trainer

    alpha = 0.25
    overrides = [f"train.runs_dir={tmp_path}", "train.batch=8", "metrics.names=[]", "train.lookahead_k=3"]
    config = load_config(REPO / "configs" / "smoke.yaml", [*overrides, f"train.lookahead_alpha={alpha}"])

    def weights(trainer) -> list[torch.Tensor]:
        nets = [trainer.accelerator.unwrap_model(m) for m in (trainer.G, trainer.D)]
        return [q.detach().clone() for net in nets for q in net.parameters()]

    trainer = Trainer(config)
    trainer.log.stream = None
    syncs, original = [], trainer._lookahead
    try:
        slow = weights(trainer)

        def checked(a: float) -> None:
            fast = weights(trainer)
            original(a)
            syncs.append(trainer.progress.step)
            for s, f, now, kept in zip(slow, fast, weights(trainer), trainer.slow, strict=True):
                torch.testing.assert_close(now, s + a * (f - s), rtol=1e-6, atol=1e-7)
                assert torch.equal(kept, now)
            slow[:] = weights(trainer)

        monkeypatch.setattr(trainer, "_lookahead", checked)
        for _ in range(4):
            trainer.step()
        checkpoint = trainer.save_checkpoint()
        for _ in range(3):
            trainer.step()
        expected = weights(trainer)
    finally:
        trainer.close()
    assert syncs == [3, 6] and (checkpoint / "lookahead.safetensors").is_file()
    assert verify_checkpoint(checkpoint, 1, lookahead=True) is None
    stripped = tmp_path / "stripped"
    shutil.copytree(checkpoint, stripped, ignore=shutil.ignore_patterns("lookahead.safetensors"))
    assert verify_checkpoint(stripped, 1) is None  # a run without Lookahead needs no such file
    assert verify_checkpoint(stripped, 1, lookahead=True) == "lookahead.safetensors is missing"
    resumed = Trainer(config, resume=str(checkpoint))
    resumed.log.stream = None
    try:
        for _ in range(3):
            resumed.step()
        for ours, theirs in zip(weights(resumed), expected, strict=True):
            assert torch.equal(ours, theirs)
    finally:
        resumed.close()
    with pytest.raises(UserError, match=r"train\.lookahead_k must be >= 0 \(0: off\) and train\.lookahead_alpha"):
        load_config(None, ["train.lookahead_alpha=0"])
