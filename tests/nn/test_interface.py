"""The SCS layers behave like their torch siblings: arguments, shapes, options, errors; MaxAbsPool2d."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scs_gan.nn import (
    MaxAbsPool2d,
    SCS2d,
    SCSTranspose2d,
    SharpenedCosineSimilarity2d,
    SharpenedCosineSimilarityTranspose2d,
)
from scs_gan.nn import functional as SF

from .reference import max_abs_pool2d_reference


def _params(cls) -> list[str]:
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


@pytest.mark.parametrize(
    "ours,theirs",
    [(SharpenedCosineSimilarity2d, nn.Conv2d), (SharpenedCosineSimilarityTranspose2d, nn.ConvTranspose2d)],
)
def test_constructor_arguments_mirror_torch(ours, theirs):
    torch_args = [n for n in _params(theirs) if n not in ("device", "dtype")]
    assert _params(ours)[: len(torch_args)] == torch_args
    assert {"p_init", "q_init", "p_floor", "eps", "sharpen", "device", "dtype"} <= set(_params(ours))


def test_aliases():
    assert SCS2d is SharpenedCosineSimilarity2d and SCSTranspose2d is SharpenedCosineSimilarityTranspose2d


CONV_CASES = [
    dict(in_channels=3, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", dilation=2, groups=2),
    dict(in_channels=2, out_channels=4, kernel_size=4, padding="same"),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="valid", stride=2),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_scs2d_shapes_match_conv2d(kwargs):
    ours, theirs = SCS2d(**kwargs), nn.Conv2d(**kwargs)
    assert ours.weight.shape == theirs.weight.shape
    x = torch.randn(2, kwargs["in_channels"], 11, 9)
    assert ours(x).shape == theirs(x).shape
    assert ours(x[0]).shape == theirs(x[0]).shape
    assert ours.p.shape == (kwargs["out_channels"],) and ours.q.shape == ()
    assert ours.eps == 1e-6 and ours.bias is None


TRANSPOSE_CASES = [
    dict(in_channels=3, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=8, kernel_size=4, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(3, 1), dilation=(1, 2)),
]


@pytest.mark.parametrize("kwargs", TRANSPOSE_CASES)
def test_scst2d_shapes_match_conv_transpose2d(kwargs):
    ours, theirs = SCSTranspose2d(**kwargs), nn.ConvTranspose2d(**kwargs)
    assert ours.weight.shape == theirs.weight.shape
    x = torch.randn(2, kwargs["in_channels"], 5, 4)
    assert ours(x).shape == theirs(x).shape
    assert ours(x[0]).shape == theirs(x[0]).shape


def test_scst2d_accepts_output_size_like_conv_transpose2d():
    ours = SCSTranspose2d(3, 4, 3, stride=2, padding=1)
    theirs = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 5, 5)
    for size in [(9, 9), (10, 10), (9, 10)]:
        assert ours(x, output_size=size).shape == theirs(x, output_size=size).shape
    with pytest.raises(ValueError, match="not reachable"):
        ours(x, output_size=(12, 12))


def test_bias_is_added_after_sharpening():
    layer = SCS2d(2, 3, 3, bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
    x = torch.randn(2, 2, 6, 6)
    without = SF.sharpened_cosine_similarity2d(x, layer.weight, layer.p, layer.q)
    torch.testing.assert_close(layer(x), without + layer.bias.view(1, 3, 1, 1))


def test_sharpen_off_is_plain_cosine_similarity():
    layer = SCS2d(2, 3, 3, sharpen=False)
    assert layer.p_raw is None and "p_raw" not in layer.state_dict()
    assert torch.equal(layer.p, torch.ones(3))
    x = torch.randn(2, 2, 6, 6)
    sharpened_at_one = SF.sharpened_cosine_similarity2d(x, layer.weight, torch.ones(3), layer.q, eps=0.0 + 1e-30)
    torch.testing.assert_close(layer(x), sharpened_at_one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_pad_like_conv2d(mode):
    layer = SCS2d(2, 3, 3, padding=1, padding_mode=mode)
    x = torch.randn(1, 2, 6, 6)
    manual = SF.sharpened_cosine_similarity2d(F.pad(x, (1, 1, 1, 1), mode=mode), layer.weight, layer.p, layer.q)
    torch.testing.assert_close(layer(x), manual)


def test_initial_p_and_q_and_repr():
    layer = SCS2d(1, 4, 3, p_init=2.5, q_init=0.25, p_floor=0.5)
    torch.testing.assert_close(layer.p, torch.full((4,), 2.5))
    torch.testing.assert_close(layer.q, torch.tensor(0.25))
    text = repr(layer)
    assert "SharpenedCosineSimilarity2d(1, 4, kernel_size=(3, 3)" in text and "p_init=2.5" in text
    assert "sharpen=False" in repr(SCSTranspose2d(1, 4, 3, sharpen=False))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: SCS2d(3, 4, 3, groups=2), "divisible by groups"),
        (lambda: SCS2d(3, 4, 3, p_init=1.0, p_floor=1.0), "greater than p_floor"),
        (lambda: SCS2d(3, 4, 3, q_init=0.0), "q_init must be > 0"),
        (lambda: SCS2d(3, 4, 3, padding="full"), "padding must be"),
        (lambda: SCS2d(3, 4, 3, stride=2, padding="same"), "not supported for strided"),
        (lambda: SCS2d(3, 4, 3, padding_mode="mirror"), "padding_mode"),
        (lambda: SCSTranspose2d(3, 4, 3, stride=2, output_padding=2), "output_padding"),
        (lambda: SCSTranspose2d(3, 4, 3, padding_mode="reflect"), "padding_mode='zeros'"),
    ],
)
def test_invalid_arguments_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_input_channels_raise_clear_errors():
    with pytest.raises(ValueError, match="channels"):
        SCS2d(3, 4, 3)(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        SCSTranspose2d(3, 4, 3)(torch.randn(1, 5, 8, 8))


# --------------------------------------------------------------------------------------------- MaxAbsPool2d


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_max_abs_pool_matches_reference(kernel, stride, padding):
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    got = MaxAbsPool2d(kernel, stride, padding)(x)
    torch.testing.assert_close(got, max_abs_pool2d_reference(x, kernel, stride, padding))


def test_max_abs_pool_keeps_sign_and_equals_max_pool_for_positive_inputs():
    x = torch.tensor([[[[1.0, -5.0], [2.0, 3.0]]]])
    assert MaxAbsPool2d(2)(x).item() == -5.0
    pos = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(MaxAbsPool2d(2)(pos), nn.MaxPool2d(2)(pos))
    _out, idx = MaxAbsPool2d(2, return_indices=True)(pos)
    _, ref_idx = nn.MaxPool2d(2, return_indices=True)(pos)
    assert torch.equal(idx, ref_idx)
    assert MaxAbsPool2d(3, ceil_mode=True)(pos).shape == nn.MaxPool2d(3, ceil_mode=True)(pos).shape
    assert MaxAbsPool2d(2, dilation=2)(pos).shape == nn.MaxPool2d(2, dilation=2)(pos).shape
    assert MaxAbsPool2d(2)(pos[0]).shape == (3, 4, 4)


def test_max_abs_pool_gradient_reaches_only_the_selected_element():
    x = torch.tensor([[[[1.0, -5.0], [2.0, 3.0]]]], requires_grad=True)
    MaxAbsPool2d(2)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))
    y = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: MaxAbsPool2d(2)(t), (y,))
    assert torch.autograd.gradgradcheck(lambda t: MaxAbsPool2d(2)(t), (y,))


@pytest.mark.parametrize("cls", [SCS2d, SCSTranspose2d])
def test_p_init_max_draws_each_channels_exponent_from_a_range(cls):
    """p_init_max: p0 uniform in [p_init, p_init_max] per output channel (the SCS practice: [1, 3]), kept
    above p_floor by the softplus; without it every channel starts at p_init."""
    torch.manual_seed(0)
    layer = cls(8, 256, 3, p_init=1.0, p_init_max=3.0, p_floor=0.5)
    p = layer.p.detach()
    assert p.min() >= 1.0 - 1e-5 and p.max() <= 3.0 + 1e-5 and p.std() > 0.4  # U[1, 3]: std 0.58
    assert "p_init=U[1.0, 3.0]" in repr(layer)
    assert torch.allclose(cls(8, 4, 3, p_init=1.2).p, torch.full((4,), 1.2))
    with pytest.raises(ValueError, match="p_init_max"):
        cls(8, 4, 3, p_init=2.0, p_init_max=1.5)
