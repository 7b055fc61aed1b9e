"""Class-conditional GANs (``model.num_classes``): labels from the data, classes from latents, both networks,
the training step, snapshots and sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scs_gan.data import DataConfig, InfiniteLoader, build_dataset
from scs_gan.errors import UserError
from scs_gan.generate import seed_latents, walk_latents
from scs_gan.images import to_uint8
from scs_gan.latents import classes_of, latents_for_seeds, truncate, with_class
from scs_gan.models import ModelConfig, build_discriminator, build_generator
from scs_gan.snapshot import load_generator, save_snapshot
from scs_gan.training.config import load_config
from tests.data.test_sources import mnist5k_digits

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def small_model(num_classes: int, kind: str = "scs") -> ModelConfig:
    config = ModelConfig(z_dim=16, num_classes=num_classes)
    config.g.channels, config.g.max_channels, config.g.kind = 4, 16, kind
    config.d.channels, config.d.max_channels, config.d.kind = 4, 16, kind
    return config


def test_mnist5k_labels_are_the_files_and_follow_the_subset():
    digits, labels = mnist5k_digits()
    full = build_dataset(DataConfig(name="mnist5k"))
    assert full.num_classes == 10 and torch.equal(full.labels, torch.from_numpy(labels).long())
    assert full.class_frequencies().tolist() == [0.1] * 10
    assert ", 10 classes, in memory" in full.summary_line() and full.summary()["classes"] == 10
    subset = build_dataset(DataConfig(name="mnist5k", max_images=50))
    # each kept image keeps its own label: find each subset image among the full set's
    for image, label in zip(subset.images[:, 0, 2:30, 2:30], subset.labels, strict=True):
        rows = np.flatnonzero((digits == image.numpy()).all(axis=(1, 2)))
        assert len(rows) >= 1 and int(label) in labels[rows]
    synthetic = build_dataset(DataConfig(name="synthetic", count=8))
    assert synthetic.labels is None and synthetic.num_classes == 0 and "classes" not in synthetic.summary_line()


def test_the_loader_gives_each_image_its_label_on_every_process():
    dataset = build_dataset(DataConfig(name="mnist5k", max_images=200))
    lookup = {bytes(image.numpy()): int(label) for image, label in zip(dataset.images, dataset.labels, strict=True)}
    for rank in range(2):
        loader = InfiniteLoader(dataset, 16, seed=3, rank=rank, world_size=2, labels=True)
        for _ in range(30):  # more than one epoch of this process's share
            images, labels = next(loader)
            assert images.shape == (16, 1, 32, 32) and labels.dtype == torch.int64
            assert [lookup[bytes(image.numpy())] for image in images] == labels.tolist()
    with pytest.raises(ValueError, match="no labels"):
        InfiniteLoader(build_dataset(DataConfig(name="synthetic", count=8)), 4, labels=True)


def test_latents_ask_for_classes_as_often_as_the_training_set_has_them():
    z = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    uniform = torch.arange(1, 11, dtype=torch.float64) / 10
    counts = torch.bincount(classes_of(z, uniform), minlength=10).double() / len(z)
    assert torch.allclose(counts, torch.full((10,), 0.1, dtype=torch.float64), atol=0.005)
    skewed = torch.tensor([0.5, 0.6, 1.0], dtype=torch.float64)
    counts = torch.bincount(classes_of(z, skewed), minlength=3).double() / len(z)
    assert torch.allclose(counts, torch.tensor([0.5, 0.1, 0.4], dtype=torch.float64), atol=0.005)
    # a seed fixes its class: the same latents give the same classes on any batch split
    seeds = latents_for_seeds(range(64), 16)
    assert torch.equal(classes_of(seeds, uniform), torch.cat([classes_of(c, uniform) for c in seeds.split(5)]))


def test_with_class_moves_every_code_into_the_class_and_keeps_the_rest():
    z = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1))
    z[:3, 0] = torch.tensor([-40.0, 40.0, 0.0])  # far tails, where the normal CDF rounds to 0 and 1
    skewed = torch.tensor([0.5, 0.6, 1.0], dtype=torch.float64)
    for cls in range(3):
        moved = with_class(z, cls, skewed)
        assert torch.isfinite(moved).all() and (classes_of(moved, skewed) == cls).all()
        assert torch.equal(moved[:, 1:], z[:, 1:])
        # monotone in the first coordinate: distinct seeds stay distinct within the class
        order = z[3:, 0].argsort()
        assert (moved[3:, 0][order].diff() >= 0).all()
    truncated = truncate(z, 0.5, conditional=True)
    assert torch.equal(truncated[:, 0], z[:, 0]) and torch.equal(truncated[:, 1:], z[:, 1:] * 0.5)
    assert torch.equal(truncate(z, 0.5, conditional=False), z * 0.5)


def test_with_class_moves_each_code_into_its_own_class_as_one_class_at_a_time_would():
    z = torch.randn(600, 8, generator=torch.Generator().manual_seed(2))
    skewed = torch.tensor([0.5, 0.6, 1.0], dtype=torch.float64)
    wanted = torch.arange(600) % 3
    moved = with_class(z, wanted, skewed)
    assert torch.equal(classes_of(moved, skewed), wanted) and torch.equal(moved[:, 1:], z[:, 1:])
    for cls in range(3):
        assert torch.equal(moved[wanted == cls], with_class(z[wanted == cls], cls, skewed))


def test_sampling_keeps_each_seeds_class_under_truncation():
    uniform = torch.arange(1, 11, dtype=torch.float64) / 10
    full = classes_of(seed_latents(range(100), 16, 1.0, conditional=True), uniform)
    assert torch.equal(classes_of(seed_latents(range(100), 16, 0.3, conditional=True), uniform), full)
    walk = walk_latents([0, 1], 16, 2, 0.3, loop=False, conditional=True)  # seed 0, halfway, seed 1
    assert classes_of(walk, uniform)[[0, 2]].tolist() == full[:2].tolist()
    # without the flag, truncation pulls every code towards class 4 or 5, the ones at the median
    shrunk = classes_of(seed_latents(range(100), 16, 0.01, conditional=False), uniform)
    assert set(shrunk.tolist()) <= {4, 5} and len(set(full.tolist())) == 10


@pytest.mark.parametrize("kind", ["scs", "conv"])
def test_both_networks_depend_on_the_class(kind):
    torch.manual_seed(0)
    g, d = build_generator(small_model(10, kind), 32, 1), build_discriminator(small_model(10, kind), 32, 1)
    g.eval(), d.eval()
    z = torch.randn(6, 16)
    images = g(z)
    assert images.shape == (6, 1, 32, 32)
    assert not torch.allclose(g(with_class(z, 3, g.class_cdf)), g(with_class(z, 7, g.class_cdf)))
    assert torch.equal(g.classes(z), classes_of(z, g.class_cdf))
    # the first layer sees the code and the class's embedding at model.g.class_norm (0.5 by default)
    inputs = []
    hook = g.net[0].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    g(z)
    hook.remove()
    assert torch.equal(inputs[0][:, :16].flatten(1), z)
    torch.testing.assert_close(inputs[0][:, 16:].flatten(1).norm(dim=1), torch.full((6,), 0.5))
    logits = d.net(images).view(6, 11)  # one shared output, then one per class
    classes = torch.tensor([0, 1, 2, 7, 8, 9])
    torch.testing.assert_close(d(images, classes), logits[:, 0] + logits[torch.arange(6), 1 + classes])
    with pytest.raises(ValueError, match="needs each image's class"):
        d(images)
    unconditional = build_generator(small_model(0, kind), 32, 1)
    assert unconditional.classes(z) is None and not hasattr(unconditional, "class_cdf")


@pytest.mark.parametrize("kind,skip", [("scs", False), ("scs", True), ("conv", False)])
def test_class_modulation_starts_as_the_identity_and_steers_only_its_class(kind, skip):
    """``model.g.class_mod`` adds a per-class gain and bias to every hidden layer before its activation: new, it
    changes nothing; trained, a class's entries change that class's images and no other's."""
    model = small_model(10, kind)
    model.g.skip = skip
    torch.manual_seed(0)
    plain = build_generator(model, 32, 1).eval()
    model.g.class_mod = True
    modulated = build_generator(model, 32, 1).eval()
    missing = modulated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == [f"mods.{i}.table.weight" for i in range(3)]  # one per hidden layer (4, 8, 16)
    assert build_generator(small_model(0, kind), 32, 1).mods is None  # unconditional: nothing to steer
    cdf = plain.class_cdf
    z = torch.cat([with_class(torch.randn(4, 16), 3, cdf), with_class(torch.randn(4, 16), 7, cdf)])
    with torch.no_grad():
        assert torch.equal(modulated(z), plain(z))
        before = modulated(z)
        modulated.mods[1].table.weight[3].fill_(0.5)  # class 3's gain and bias at 8x8
        after = modulated(z)
    assert not torch.allclose(after[:4], before[:4]) and torch.equal(after[4:], before[4:])
    # it acts on the layer's output before the activation: x * (1 + gain) + bias
    outputs, inputs = [], []
    layer = modulated.net[modulated._mod_at[1]]
    activation = modulated.net[modulated._mod_at[1] + 1]
    hooks = [
        layer.register_forward_hook(lambda _, __, out: outputs.append(out)),
        activation.register_forward_pre_hook(lambda _, args: inputs.append(args[0])),
    ]
    with torch.no_grad():
        modulated(z)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(inputs[0][:4], outputs[0][:4] * 1.5 + 0.5)
    torch.testing.assert_close(inputs[0][4:], outputs[0][4:])


@pytest.mark.parametrize("kind", ["scs", "conv"])
def test_class_norm_0_leaves_the_code_alone_and_conditions_through_the_modulation_only(kind):
    """With ``class_norm=0`` (and ``class_mod``) no embedding is appended: the first layer sees the code alone,
    and the class still changes the images, through the per-layer gain and bias (BigGAN's conditional batch
    norm, for the DCGAN)."""
    model = small_model(10, kind)
    model.g.class_norm, model.g.class_mod = 0.0, True
    model.validate()
    torch.manual_seed(0)
    g = build_generator(model, 32, 1).eval()
    assert g.embed is None and g.class_dim == 0 and g.net[0].in_channels == 16
    with torch.no_grad():
        for mod in g.mods:
            mod.table.weight.normal_(0, 0.3)
        z = torch.randn(4, 16)
        assert not torch.allclose(g(with_class(z, 3, g.class_cdf)), g(with_class(z, 7, g.class_cdf)))
    assert torch.equal(g.classes(z), classes_of(z, g.class_cdf))


@pytest.mark.parametrize("num_classes", [0, 10])
def test_latent_modulation_starts_as_the_identity_and_steers_each_image_by_its_code(num_classes):
    """``model.g.latent_mod`` adds a gain and bias linear in the code to every hidden layer (conditional or not):
    new, it changes nothing; trained, it acts on each layer's output before the activation as
    ``x * (1 + gain) + bias`` with ``(gain, bias) = W z``, summed with the class's table under ``class_mod``."""
    model = small_model(num_classes)
    torch.manual_seed(0)
    plain = build_generator(model, 32, 1).eval()
    model.g.latent_mod = True
    modulated = build_generator(model, 32, 1).eval()
    missing = modulated.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == [f"mods.{i}.latent.weight" for i in range(3)]
    z = torch.randn(6, 16)
    with torch.no_grad():
        assert torch.equal(modulated(z), plain(z))
        weight = modulated.mods[2].latent.weight  # (2 x 4 channels at 16x16, z_dim)
        weight.normal_(0, 0.1)
    outputs, inputs = [], []
    at = modulated._mod_at[2]
    hooks = [
        modulated.net[at].register_forward_hook(lambda _, __, out: outputs.append(out)),
        modulated.net[at + 1].register_forward_pre_hook(lambda _, args: inputs.append(args[0])),
    ]
    with torch.no_grad():
        modulated(z)
    for hook in hooks:
        hook.remove()
    gain, bias = (z @ weight.T).chunk(2, dim=1)
    torch.testing.assert_close(inputs[0], outputs[0] * (1 + gain[:, :, None, None]) + bias[:, :, None, None])
    if num_classes:  # with class_mod too, the class's gain and bias are added to the code's
        model.g.class_mod = True
        both = build_generator(model, 32, 1).eval()
        assert [m.table is not None and m.latent is not None for m in both.mods] == [True] * 3


@pytest.mark.parametrize(
    "class_dim,class_mod,class_norm", [(0, False, 0.5), (3, False, 0.5), (0, True, 0.5), (0, True, 0.0)]
)
def test_a_conditional_snapshot_reloads_with_its_class_frequencies(tmp_path, class_dim, class_mod, class_norm):
    torch.manual_seed(0)
    model = small_model(3)
    model.g.class_dim, model.g.class_mod, model.g.class_norm = class_dim, class_mod, class_norm
    g = build_generator(model, 32, 1).eval()
    # the embedding has the code's length (16) unless model.g.class_dim shortens it; class_norm 0: none
    if class_norm:
        assert g.embed.weight.shape == (3, class_dim or 16) and g.net[0].in_channels == 16 + (class_dim or 16)
    else:
        assert g.embed is None and g.net[0].in_channels == 16
    g.class_cdf.copy_(torch.tensor([0.2, 0.3, 1.0], dtype=torch.float64))
    if class_mod:
        with torch.no_grad():
            for mod in g.mods:
                mod.table.weight.normal_(0, 0.3)
    path = save_snapshot(g, tmp_path / "g.safetensors")
    loaded = load_generator(path)
    assert loaded.num_classes == 3 and loaded.class_dim == g.class_dim and torch.equal(loaded.class_cdf, g.class_cdf)
    assert loaded.config.class_mod == class_mod
    z = latents_for_seeds(range(8), 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), g(z), rtol=0, atol=0)


def test_the_training_step_gives_d_each_real_images_label_and_each_fakes_class(tmp_path, monkeypatch):
    from scs_gan.training import Trainer

    config = load_config(
        CONFIGS / "smoke.yaml",
        [f"train.runs_dir={tmp_path}", "train.batch=8", "model.num_classes=10", "metrics.names=[]", "train.augment=[]"],
    )
    trainer = Trainer(config)
    trainer.log.stream = None
    lookup = {bytes(i.numpy()): int(c) for i, c in zip(trainer.dataset.images, trainer.dataset.labels, strict=True)}
    seen = []
    d_losses = trainer._d_losses

    def recording(reals, fakes, real_classes, fake_classes):
        seen.append((reals.detach(), real_classes, fakes.detach(), fake_classes))
        return d_losses(reals, fakes, real_classes, fake_classes)

    monkeypatch.setattr(trainer, "_d_losses", recording)
    try:
        assert trainer.G_ema.class_cdf.tolist() == pytest.approx([0.1 * (k + 1) for k in range(10)])
        trainer.step()
        reals, real_classes, fakes, fake_classes = seen[0]
        as_uint8 = ((reals + 1) * 127.5).round().to(torch.uint8)
        assert [lookup[bytes(image.numpy())] for image in as_uint8] == real_classes.tolist()
        assert fake_classes is not None and fake_classes.shape == (8,) and fakes.shape == reals.shape
    finally:
        monkeypatch.undo()
        trainer.close()


@pytest.mark.parametrize("mode_seeking", ["0", "0.03"])
def test_batch_fake_classes_are_the_real_labels_in_the_d_step_and_again_in_the_g_step(
    tmp_path, monkeypatch, mode_seeking
):
    """``train.fake_classes=batch``: each D-step fake asks for the class of the real beside it (with mode-seeking
    pairs, of every other real, so that a pair shares its class), and the G step's fakes ask for the same."""
    from scs_gan.training import Trainer

    overrides = [f"train.runs_dir={tmp_path}", "train.batch=8", "train.batch_gpu=4", "model.num_classes=10"]
    overrides += ["metrics.names=[]", "train.fake_classes=batch", f"train.mode_seeking={mode_seeking}"]
    trainer = Trainer(load_config(CONFIGS / "smoke.yaml", overrides))
    trainer.log.stream = None
    d_seen, g_seen = [], []
    d_losses, g_loss_of = trainer._d_losses, trainer._g_loss

    def recording_d(reals, fakes, real_classes, fake_classes):
        d_seen.append((real_classes, fake_classes))
        return d_losses(reals, fakes, real_classes, fake_classes)

    def recording_g(fakes, classes, *rest):
        g_seen.append(classes)
        return g_loss_of(fakes, classes, *rest)

    monkeypatch.setattr(trainer, "_d_losses", recording_d)
    monkeypatch.setattr(trainer, "_g_loss", recording_g)
    try:
        for _ in range(3):
            trainer.step()
        assert len(d_seen) == len(g_seen) == 6  # two micro-batches of 4 per step
        for (real_classes, fake_classes), g_classes in zip(d_seen, g_seen, strict=True):
            wanted = real_classes[0::2].repeat_interleave(2) if mode_seeking != "0" else real_classes
            assert torch.equal(fake_classes, wanted) and torch.equal(g_classes, wanted)
        assert len({tuple(r.tolist()) for r, _ in d_seen}) > 1
    finally:
        monkeypatch.undo()
        trainer.close()


def test_class_norm_0_is_no_error_where_the_gan_is_unconditional(tmp_path):
    """The class embedding's norm means nothing without classes: ``class_norm=0`` without ``class_mod`` is
    refused only once the class count is known to be positive (after ``auto`` is resolved)."""
    from scs_gan.training import Trainer

    assert load_config(CONFIGS / "smoke.yaml", ["model.num_classes=0", "model.g.class_norm=0"]).model.g.class_norm == 0
    config = load_config(
        CONFIGS / "smoke.yaml", [f"train.runs_dir={tmp_path}", "data.name=synthetic", "model.g.class_norm=0"]
    )
    config.model.num_classes = "auto"
    trainer = Trainer(config)
    try:
        assert not trainer.conditional
    finally:
        trainer.close()


@pytest.mark.parametrize("data,classes", [("mnist5k", 10), ("synthetic", 0)])
def test_auto_classes_follow_the_data_and_the_run_records_the_count(tmp_path, data, classes):
    from scs_gan.training import Trainer
    from scs_gan.training.config import load_run_config

    config = load_config(CONFIGS / "smoke.yaml", [f"train.runs_dir={tmp_path}", f"data.name={data}"])
    config.model.num_classes = "auto"
    trainer = Trainer(config)
    try:
        assert trainer.conditional == (classes > 0)
        assert trainer.accelerator.unwrap_model(trainer.G).num_classes == classes
        assert load_run_config(trainer.run_dir).model.num_classes == classes
    finally:
        trainer.close()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.num_classes=7"], "dataset mnist5k has 10 classes; set model.num_classes=10"),
        (["model.num_classes=10", "data.name=synthetic"], "dataset synthetic has no class labels"),
        (["model.num_classes=-1"], "model.num_classes must be 0"),
        (["model.num_classes=10", "model.g.class_norm=-1"], "model.g.class_norm must be positive"),
        (["model.num_classes=10", "model.g.class_norm=0"], "class_norm=0 leaves the class out of the code"),
        (["model.num_classes=auto", "model.g.class_norm=0"], "class_norm=0 leaves the class out of the code"),
        (["model.num_classes=10", "model.g.class_dim=-2"], "model.g.class_dim must be 0"),
    ],
)
def test_classes_that_do_not_fit_the_data_are_one_sentence(tmp_path, overrides, message):
    from scs_gan.training import Trainer

    with pytest.raises(UserError, match=message):
        Trainer(load_config(CONFIGS / "smoke.yaml", [f"train.runs_dir={tmp_path}", *overrides]))
    assert list(tmp_path.iterdir()) == []  # the failed start left no run directory


def test_generate_draws_one_class_with_class_and_refuses_what_cannot_have_one(tmp_path, capsys):
    from PIL import Image

    from scs_gan.cli import main

    torch.manual_seed(0)
    g = build_generator(small_model(10), 32, 1).eval()
    path = save_snapshot(g, tmp_path / "g.safetensors")
    assert main(["generate", "--snapshot", str(path), "--seeds", "0-5", "--class", "3", "--outdir", str(tmp_path)]) == 0
    z = with_class(latents_for_seeds(range(6), 16), 3, g.class_cdf)
    with torch.no_grad():
        expected = to_uint8(g(z))
    for seed in range(6):
        written = np.asarray(Image.open(tmp_path / f"seed{seed:04d}.png"))
        assert np.array_equal(written.reshape(32, 32), expected[seed, 0].numpy())
    capsys.readouterr()
    base = ["generate", "--seeds", "0-3", "--out", str(tmp_path / "grid.png")]
    assert main([*base, "--snapshot", str(path), "--class", "10"]) == 2
    assert "--class must be between 0 and 9" in capsys.readouterr().err
    unconditional = save_snapshot(build_generator(small_model(0), 32, 1), tmp_path / "u.safetensors")
    assert main([*base, "--snapshot", str(unconditional), "--class", "1"]) == 2
    assert "needs a class-conditional generator" in capsys.readouterr().err
