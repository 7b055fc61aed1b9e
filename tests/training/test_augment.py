"""Differentiable augmentation (DiffAugment policies with probability p) and ADA's adaptive strength."""

from __future__ import annotations

import json

import pytest
import torch

from scs_gan.training.augment import POLICIES, AdaptiveStrength, augment, cutout, translate, validate_policy

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def _generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _distinct_images(n: int, c: int, h: int, w: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Images in [-1, 1] whose pixels are all distinct and non-zero, so each output value names its source."""
    values = torch.linspace(-1, 1, n * c * h * w + 1, dtype=torch.float64)
    values = values[values != 0][: n * c * h * w]
    return values[torch.randperm(n * c * h * w, generator=_generator(0))].reshape(n, c, h, w).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("policy", [[name] for name in POLICIES] + [["color", "translation", "cutout"]])
def test_shape_dtype_and_device_are_kept(device, dtype, policy):
    images = (torch.rand(6, 3, 12, 10, generator=_generator(1)) * 2 - 1).to(device=device, dtype=dtype)
    out = augment(images, policy, p=0.7, generator=_generator(2, device))
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert torch.isfinite(out.float()).all()
    assert not torch.equal(out, images)


@pytest.mark.parametrize("policy", ["translation", "cutout"])
def test_translation_and_cutout_only_copy_input_values_or_zeros(policy):
    images = _distinct_images(16, 3, 16, 16)
    out = augment(images, [policy], p=1.0, generator=_generator(3))
    allowed = torch.cat([images.flatten(), torch.zeros(1)])
    assert torch.isin(out, allowed).all()
    assert (out == 0).any(), "p=1 must zero some pixels"
    # Values stay in their own image and channel.
    for n in range(16):
        for c in range(3):
            assert torch.isin(out[n, c], torch.cat([images[n, c].flatten(), torch.zeros(1)])).all()


def test_color_changes_values_and_stays_finite_for_rgb_and_grey():
    for channels in (3, 1):
        images = _distinct_images(8, channels, 8, 8)
        out = augment(images, ["color"], p=1.0, generator=_generator(4))
        assert torch.isfinite(out).all()
        assert not torch.isin(out, images).all()


def test_grey_color_is_brightness_then_contrast_only():
    """For one channel, saturation is skipped: the result is (x + b - mean) * c + mean with the drawn b and c."""
    images = _distinct_images(5, 1, 6, 6, torch.float64)
    out = augment(images, ["color"], p=1.0, generator=_generator(5))
    g = _generator(5)
    torch.rand(5, generator=g)  # which images are augmented (all, at p=1)
    b, _s, c = torch.rand(5, generator=g) - 0.5, torch.rand(5, generator=g) * 2, torch.rand(5, generator=g) + 0.5
    x = images + b.double().view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (x - mean) * c.double().view(-1, 1, 1, 1) + mean)


@pytest.mark.parametrize("policy", [[name] for name in POLICIES] + [list(POLICIES)])
def test_p_zero_is_exactly_the_identity(policy):
    images = _distinct_images(8, 3, 8, 8)
    g = _generator(6)
    state = g.get_state()
    assert torch.equal(augment(images, policy, p=0.0, generator=g), images)
    assert torch.equal(g.get_state(), state), "p=0 draws nothing"


@pytest.mark.parametrize("policy", POLICIES)
def test_p_below_one_leaves_the_unchosen_images_bit_for_bit(policy):
    images = _distinct_images(64, 3, 8, 8)
    out = augment(images, [policy], p=0.5, generator=_generator(7))
    chosen = torch.rand(64, generator=_generator(7)) < 0.5
    assert 10 < chosen.sum() < 54
    changed = torch.tensor([not torch.equal(out[n], images[n]) for n in range(64)])
    assert not changed[~chosen].any()
    assert changed[chosen].float().mean() > 0.8, "a chosen image is changed (unless translated by (0, 0))"


def test_translate_matches_a_hand_shifted_image():
    images = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    out = translate(images, torch.tensor([[1, -2]]))
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1:, :2] = images[0, 0, :3, 2:]  # down by 1, left by 2, zeros where nothing came from
    assert torch.equal(out, expected)


def test_translation_moves_a_one_hot_pixel_by_the_drawn_amount_at_most_an_eighth():
    n, size = 32, 32
    images = torch.zeros(n, 1, size, size)
    images[:, :, 16, 16] = 1.0
    out = augment(images, ["translation"], p=1.0, generator=_generator(8))
    g = _generator(8)
    torch.rand(n, generator=g)  # which images are augmented (all, at p=1)
    dy = torch.randint(-4, 5, (n,), generator=g)  # round(32 / 8) = 4
    dx = torch.randint(-4, 5, (n,), generator=g)
    assert out.sum() == n, "the hot pixel stays inside and is never duplicated"
    moved = 0
    for k in range(n):
        (y, x) = (out[k, 0] == 1).nonzero()[0].tolist()
        assert abs(y - 16) <= size // 8 and abs(x - 16) <= size // 8
        assert (y - 16, x - 16) == (dy[k].item(), dx[k].item())
        moved += (y, x) != (16, 16)
    assert moved > n // 2
    drawn = torch.cat([dy, dx])
    assert (drawn.min().item(), drawn.max().item()) == (-4, 4), "the whole range is used"


@pytest.mark.parametrize(("shift", "most"), [(1 / 16, 2), (0.25, 8), (0.01, 0)])
def test_translation_shift_sets_the_largest_shift_as_a_fraction_of_the_size(shift, most):
    n, size = 256, 32
    images = torch.zeros(n, 1, size, size)
    images[:, :, 16, 16] = 1.0
    out = augment(images, ["translation"], p=1.0, generator=_generator(3), shift=shift)
    g = _generator(3)
    torch.rand(n, generator=g)
    dy = torch.randint(-most, most + 1, (n,), generator=g)  # round(32 * shift), halves up
    dx = torch.randint(-most, most + 1, (n,), generator=g)
    where = torch.stack([(out[k, 0] == 1).nonzero()[0] for k in range(n)]) - 16
    assert torch.equal(where, torch.stack([dy, dx], dim=1))
    assert where.abs().max().item() == most, "the whole range is used, and no more"


def test_cutout_zeroes_one_rectangle_of_at_most_half_the_size():
    n, h, w = 64, 16, 12
    out = augment(torch.ones(n, 2, h, w), ["cutout"], p=1.0, generator=_generator(9))
    sizes = set()
    for k in range(n):
        zero = out[k, 0] == 0
        assert torch.equal(zero, out[k, 1] == 0), "all channels are cut alike"
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert len(rows) > 0
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and zero.sum() == box.numel(), "the zeros form one rectangle"
        assert len(rows) <= h // 2 and len(cols) <= w // 2
        sizes.add((len(rows), len(cols)))
    assert (h // 2, w // 2) in sizes and len(sizes) > 1, "whole squares inside, clipped ones at the border"


def test_cutout_clips_rectangles_that_hang_over_the_border():
    out = cutout(torch.ones(2, 1, 4, 4), torch.tensor([[-1, -1], [3, 2]]), (2, 2))
    assert out[0, 0].eq(0).nonzero().tolist() == [[0, 0]]
    assert out[1, 0].eq(0).nonzero().tolist() == [[3, 2], [3, 3]]


def test_same_generator_seed_gives_the_same_augmentation_and_another_seed_another():
    images = _distinct_images(8, 3, 16, 16)
    policy = ["color", "translation", "cutout"]
    first = augment(images, policy, p=0.8, generator=_generator(10))
    assert torch.equal(first, augment(images, policy, p=0.8, generator=_generator(10)))
    assert not torch.equal(first, augment(images, policy, p=0.8, generator=_generator(11)))
    torch.manual_seed(12)
    global_rng = augment(images, policy, p=0.8)
    torch.manual_seed(12)
    assert torch.equal(global_rng, augment(images, policy, p=0.8))


def test_float32_and_bfloat16_images_get_the_same_draws():
    images = _distinct_images(8, 1, 16, 16)
    out32 = augment(images, ["translation", "cutout"], p=0.6, generator=_generator(13))
    out16 = augment(images.bfloat16(), ["translation", "cutout"], p=0.6, generator=_generator(13))
    assert torch.equal(out32.bfloat16(), out16)


@pytest.mark.parametrize("policy", POLICIES)
def test_gradients_flow_to_the_images(policy):
    images = _distinct_images(4, 3, 8, 8).requires_grad_()
    weights = torch.rand(4, 3, 8, 8, generator=_generator(14))
    (grad,) = torch.autograd.grad((augment(images, [policy], p=1.0, generator=_generator(15)) * weights).sum(), images)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_first_and_second_derivatives_match_finite_differences(policy):
    """gradcheck, and gradgradcheck: R1 on augmented reals differentiates the input gradient again."""
    images = _distinct_images(3, 3, 4, 4, torch.float64).requires_grad_()

    def fn(x):  # the same draws on every call
        return augment(x, [policy], p=0.7, generator=_generator(16))

    assert torch.autograd.gradcheck(fn, (images,))
    assert torch.autograd.gradgradcheck(fn, (images,))


def test_r1_on_augmented_reals_backpropagates_to_the_discriminator():
    weight = torch.randn(3, generator=_generator(17), dtype=torch.float64).requires_grad_()
    reals = _distinct_images(4, 3, 8, 8, torch.float64).requires_grad_()
    augmented = augment(reals, list(POLICIES), p=1.0, generator=_generator(18))
    logits = (augmented.square() * weight.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    (d_weight,) = torch.autograd.grad(grad.square().sum(), weight)
    assert d_weight.abs().sum() > 0


def test_unknown_repeated_or_string_policies_are_value_errors_naming_the_valid_ones():
    images = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown augmentation policy 'flip'") as error:
        augment(images, ["translation", "flip"], p=1.0)
    assert all(name in str(error.value) for name in POLICIES)
    with pytest.raises(ValueError, match="translation, cutout, color"):
        validate_policy("translation")
    with pytest.raises(ValueError, match="twice"):
        validate_policy(["cutout", "cutout"])
    assert validate_policy([]) == ()
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            augment(images, ["cutout"], p=p)
    with pytest.raises(ValueError, match="floating-point images"):
        augment(torch.zeros(8, 8), ["cutout"], p=1.0)
    for shift in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"shift=.* in \(0, 1\)"):
            augment(images, ["translation"], p=1.0, shift=shift)


def _run(strength: AdaptiveStrength, steps: int, sign: float, batch: int = 64) -> list[float]:
    ps = []
    for _ in range(steps):
        strength.accumulate(sign * batch, batch)
        ps.append(strength.step(batch))
    return ps


def test_adaptive_strength_rises_at_the_documented_rate_when_d_is_sure_of_the_reals():
    strength = AdaptiveStrength(p=0.0, target=0.6, interval=4, kimg_to_full=100)
    ps = _run(strength, 12, sign=1.0)
    rate = 64 * 4 / (100 * 1000)
    assert ps[:3] == [0.0, 0.0, 0.0], "p moves only every `interval` steps"
    assert ps[3] == pytest.approx(rate) and ps[7] == pytest.approx(2 * rate) and ps[11] == pytest.approx(3 * rate)
    assert strength.rt == 1.0
    # From 0 to 1 in kimg_to_full thousand images: 100,000 / 64 steps.
    assert _run(AdaptiveStrength(kimg_to_full=100), 1560, sign=1.0)[-1] == pytest.approx(1560 * 64 / 100_000)


def test_adaptive_strength_falls_when_the_mean_sign_is_below_target_and_holds_at_it():
    strength = AdaptiveStrength(p=0.5, target=0.6)
    for _ in range(4):
        strength.accumulate(0.2 * 64, 64)  # r_t = 0.2
        strength.step(64)
    assert strength.p == pytest.approx(0.5 - 64 * 4 / 100_000)
    for _ in range(4):
        strength.accumulate(0.6 * 10, 10)  # r_t = target exactly
        strength.step(64)
    assert strength.p == pytest.approx(0.5 - 64 * 4 / 100_000)


def test_adaptive_strength_is_clamped_to_zero_and_one():
    assert _run(AdaptiveStrength(p=0.999, kimg_to_full=1), 8, sign=1.0)[-1] == 1.0
    assert _run(AdaptiveStrength(p=0.001, kimg_to_full=1), 8, sign=-1.0)[-1] == 0.0


def test_adaptive_strength_in_fixed_mode_measures_but_stays_put():
    strength = AdaptiveStrength(p=0.3, target=None)
    assert strength.fixed
    assert set(_run(strength, 40, sign=1.0)) == {0.3}
    assert strength.rt == 1.0


def test_adaptive_strength_reduces_over_processes_on_adjustment_steps_only():
    calls = []

    def reduce(signs_sum, count):  # a second process whose reals all had sign -1
        calls.append((signs_sum, count))
        return signs_sum - count, 2 * count

    strength = AdaptiveStrength(p=0.5, target=0.6)
    for _ in range(8):
        strength.accumulate(64.0, 64)
        strength.step(128, reduce=reduce)
    assert calls == [(256.0, 256), (256.0, 256)]
    assert strength.rt == 0.0 and strength.p == pytest.approx(0.5 - 2 * 128 * 4 / 100_000)


def test_adaptive_strength_resumes_exactly_from_json():
    original = AdaptiveStrength(p=0.1, target=0.6, interval=4, kimg_to_full=3)
    signs = [1.0, 0.5, -0.3, 0.9, 0.7, 1.0, 0.2, 0.61, 0.59, 1.0, 1.0, 0.1, 0.8]
    for s in signs:
        original.accumulate(s * 48, 48)
        original.step(48)
    assert original.steps != 0 and original.signs_count != 0, "resume mid-interval"
    restored = AdaptiveStrength(target=0.6, interval=4, kimg_to_full=3)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    for s in signs * 3:
        for strength in (original, restored):
            strength.accumulate(s * 48, 48)
            strength.step(48)
        assert restored.p == original.p
    assert 0.0 < original.p < 1.0 and original.p != 0.1


def test_adaptive_strength_rejects_bad_settings_and_states():
    for kwargs in ({"p": 1.5}, {"target": 2.0}, {"interval": 0}, {"kimg_to_full": 0}):
        with pytest.raises(ValueError):
            AdaptiveStrength(**kwargs)
    with pytest.raises(ValueError, match="keys"):
        AdaptiveStrength().load_state_dict({"p": 0.5})
