"""The SCS layers compute exactly the documented formulas, with exact gradients."""

from __future__ import annotations

import pytest
import torch

from scs_gan.nn import SCS2d, SCSTranspose2d
from scs_gan.nn import functional as SF

from .reference import scs2d_reference, scst2d_reference

EPS = 1e-6

# (in, out, kernel, stride, padding, dilation, groups, H, W)
SCS2D_CONFIGS = [
    (3, 4, 3, 1, 0, 1, 1, 6, 6),
    (3, 4, 3, 1, 1, 1, 1, 5, 7),
    (4, 6, 2, 2, 1, 1, 2, 6, 6),
    (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, 7, 5),
    (2, 4, 3, 1, 2, 2, 1, 7, 7),
    (4, 4, 3, 2, 2, 1, 4, 7, 7),
    (1, 2, 4, 2, 1, 1, 1, 8, 8),
]
# (in, out, kernel, stride, padding, output_padding, dilation, groups, H, W)
SCST2D_CONFIGS = [
    (3, 4, 3, 1, 0, 0, 1, 1, 4, 4),
    (3, 4, 4, 2, 1, 0, 1, 1, 3, 3),
    (4, 6, 3, 2, 1, 1, 1, 2, 3, 4),
    (2, 3, 3, 3, 0, 0, 1, 1, 3, 3),
    (2, 3, 2, 3, 0, 2, 1, 1, 3, 3),
    (2, 2, 3, 1, 2, 0, 2, 1, 4, 4),
    (3, 2, 4, 1, 0, 0, 1, 1, 1, 1),
    (2, 4, (3, 2), (2, 1), (1, 0), (1, 0), 1, 2, 3, 3),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _inputs(shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def make_scs2d(config, sharpen=True, bias=False, seed=0):
    cin, cout, k, s, pad, d, g, h, w = config
    torch.manual_seed(seed)
    layer = SCS2d(cin, cout, k, s, pad, d, g, bias=bias, sharpen=sharpen).double()
    with torch.no_grad():
        if sharpen:
            layer.p_raw.uniform_(-1.0, 1.5)  # spread of exponents per channel
        layer.q_raw.fill_(-1.0)
        if bias:
            layer.bias.normal_()
    x = _inputs((2, cin, h, w), seed)
    return layer, x


def make_scst2d(config, sharpen=True, bias=False, seed=0):
    cin, cout, k, s, pad, op, d, g, h, w = config
    torch.manual_seed(seed)
    layer = SCSTranspose2d(cin, cout, k, s, pad, op, g, bias, d, sharpen=sharpen).double()
    with torch.no_grad():
        if sharpen:
            layer.p_raw.uniform_(-1.0, 1.5)
        layer.q_raw.fill_(-1.0)
        if bias:
            layer.bias.normal_()
    x = _inputs((2, cin, h, w), seed)
    return layer, x


def scs2d_args(layer):
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups, eps=EPS)


def scst2d_args(layer):
    return dict(
        stride=layer.stride,
        padding=layer.padding,
        output_padding=layer.output_padding,
        groups=layer.groups,
        dilation=layer.dilation,
        eps=EPS,
    )


def _reference_2d(layer, x):
    p = layer.p.detach() if layer.sharpen else None
    bias = None if layer.bias is None else layer.bias.detach()
    return scs2d_reference(
        x,
        layer.weight.detach(),
        p,
        float(layer.q.detach()),
        bias,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        EPS,
    )


def _reference_t2d(layer, x):
    p = layer.p.detach() if layer.sharpen else None
    bias = None if layer.bias is None else layer.bias.detach()
    return scst2d_reference(
        x,
        layer.weight.detach(),
        p,
        float(layer.q.detach()),
        bias,
        layer.stride,
        layer.padding,
        layer.output_padding,
        layer.dilation,
        layer.groups,
        EPS,
    )


@pytest.mark.parametrize("config", SCS2D_CONFIGS)
@pytest.mark.parametrize("sharpen,bias", [(True, False), (False, False), (True, True)])
def test_scs2d_matches_loop_reference(config, sharpen, bias):
    layer, x = make_scs2d(config, sharpen, bias)
    expected, _ = _reference_2d(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer(x[0]), expected[0], rtol=1e-10, atol=1e-12)  # unbatched


@pytest.mark.parametrize("config", SCST2D_CONFIGS)
@pytest.mark.parametrize("sharpen,bias", [(True, False), (False, False), (True, True)])
def test_scst2d_matches_loop_reference(config, sharpen, bias):
    layer, x = make_scst2d(config, sharpen, bias)
    expected, _ = _reference_t2d(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer(x[0]), expected[0], rtol=1e-10, atol=1e-12)


def test_composite_path_matches_loop_reference():
    """The native-op composite (used under torch.compile and for double backward) is the same maths."""
    layer, x = make_scs2d(SCS2D_CONFIGS[2])
    expected, _ = _reference_2d(layer, x)
    w_hat = layer.weight * torch.rsqrt(layer.weight.square().sum((1, 2, 3), keepdim=True) + EPS)
    got = SF._scs2d_composite(
        x,
        w_hat,
        layer.p,
        layer.q,
        None,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        EPS,
        torch.float64,
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    tlayer, tx = make_scst2d(SCST2D_CONFIGS[2])
    expected, _ = _reference_t2d(tlayer, tx)
    w2 = SF._sum_w2_per_group(tlayer.weight, tlayer.groups, torch.float64)
    got = SF._scst2d_composite(
        tx,
        tlayer.weight,
        w2,
        tlayer.p,
        tlayer.q,
        None,
        tlayer.stride,
        tlayer.padding,
        tlayer.output_padding,
        tlayer.dilation,
        tlayer.groups,
        EPS,
        torch.float64,
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
def test_outputs_are_true_cosines(transposed):
    """|c| <= 1 everywhere, for inputs of any scale, including every stride phase and border."""
    configs = SCST2D_CONFIGS if transposed else SCS2D_CONFIGS
    for i, config in enumerate(configs):
        for scale in (1e-3, 1.0, 1e3):
            layer, x = (make_scst2d if transposed else make_scs2d)(config, sharpen=False, seed=i)
            with torch.no_grad():
                layer.q_raw.fill_(-30.0)  # q ~ 1e-13: the bound must not rely on q
                c = layer(x * scale)
            assert c.abs().max() <= 1.0 + 1e-12
            # and the loop reference agrees that these are cosines
            _, c_ref = (_reference_t2d if transposed else _reference_2d)(layer, x * scale)
            torch.testing.assert_close(c, c_ref, rtol=1e-9, atol=1e-12)


def test_transposed_cosine_reaches_one_at_every_stride_phase():
    """An input equal to the weight taps gives c = 1 at all phases: no checkerboard of output scales."""
    layer = SCSTranspose2d(1, 1, 4, stride=2, padding=1, sharpen=False).double()
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.q_raw.fill_(-40.0)
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, torch.ones_like(y), rtol=1e-6, atol=1e-6)


def _safe_input(make, config, sharpen, bias=False):
    """An input whose cosines stay away from 0, where sign(c) * (|c| + eps)**p jumps by 2 * eps**p.

    Finite differences straddling that jump would be wrong, not the analytic gradient.
    """
    for seed in range(50):
        layer, x = make(config, sharpen, bias, seed=seed)
        with torch.no_grad():
            ref_fn = _reference_t2d if make is make_scst2d else _reference_2d
            _, c = ref_fn(layer, x)
        reached = c != 0  # outputs that no tap reaches are exactly 0 whatever the input
        if c[reached].abs().min() > 1e-3:
            return layer, x
    raise AssertionError("no seed gave cosines away from zero")


def _grad_inputs(layer, x):
    x = x.clone().requires_grad_()
    p = (layer.p.detach().clone().requires_grad_()) if layer.sharpen else None
    q = layer.q.detach().clone().requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    return x, w, p, q, b


@pytest.mark.parametrize("config", SCS2D_CONFIGS)
@pytest.mark.parametrize("sharpen", [True, False])
def test_scs2d_gradcheck(config, sharpen):
    layer, x = _safe_input(make_scs2d, config, sharpen, bias=True)
    x, w, p, q, b = _grad_inputs(layer, x)
    args = scs2d_args(layer)
    inputs = tuple(t for t in (x, w, p, q, b) if t is not None)

    def fn(*ts):
        it = iter(ts)
        xx, ww = next(it), next(it)
        pp = next(it) if sharpen else None
        qq, bb = next(it), next(it)
        return SF.sharpened_cosine_similarity2d(xx, ww, pp, qq, bb, **args)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("config", SCST2D_CONFIGS)
@pytest.mark.parametrize("sharpen", [True, False])
def test_scst2d_gradcheck(config, sharpen):
    layer, x = _safe_input(make_scst2d, config, sharpen, bias=True)
    x, w, p, q, b = _grad_inputs(layer, x)
    args = scst2d_args(layer)
    inputs = tuple(t for t in (x, w, p, q, b) if t is not None)

    def fn(*ts):
        it = iter(ts)
        xx, ww = next(it), next(it)
        pp = next(it) if sharpen else None
        qq, bb = next(it), next(it)
        return SF.sharpened_cosine_similarity_transpose2d(xx, ww, pp, qq, bb, **args)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("index", [0, 2, 4])
def test_scs2d_gradgradcheck(index):
    layer, x = _safe_input(make_scs2d, SCS2D_CONFIGS[index], True)
    x, w, p, q, _ = _grad_inputs(layer, x)
    args = scs2d_args(layer)
    assert torch.autograd.gradgradcheck(lambda *t: SF.sharpened_cosine_similarity2d(*t, **args), (x, w, p, q))


@pytest.mark.parametrize("index", [1, 2, 4])
def test_scst2d_gradgradcheck(index):
    layer, x = _safe_input(make_scst2d, SCST2D_CONFIGS[index], True)
    x, w, p, q, _ = _grad_inputs(layer, x)
    args = scst2d_args(layer)
    assert torch.autograd.gradgradcheck(lambda *t: SF.sharpened_cosine_similarity_transpose2d(*t, **args), (x, w, p, q))


@pytest.mark.parametrize("transposed", [False, True])
def test_gradcheck_through_module_parametrisation(transposed):
    """Gradients reach the raw parameters behind the smooth constraints on p and q."""
    make = make_scst2d if transposed else make_scs2d
    layer, x = _safe_input(make, (SCST2D_CONFIGS if transposed else SCS2D_CONFIGS)[1], True)

    def fn(w, p_raw, q_raw):  # the module's own forward, with its .p and .q, on the given raw parameters
        return torch.func.functional_call(layer, {"weight": w, "p_raw": p_raw, "q_raw": q_raw}, (x,))

    inputs = tuple(t.detach().clone().requires_grad_() for t in (layer.weight, layer.p_raw, layer.q_raw))
    assert torch.autograd.gradcheck(fn, inputs)
    # the constraint really is applied: p_raw far below zero still gives p >= p_floor, and the gradient
    # that reaches p_raw is d out/d p times the softplus slope
    p_raw = torch.full_like(layer.p_raw, -30.0, requires_grad=True)
    out = torch.func.functional_call(layer, {"p_raw": p_raw}, (x,))
    with torch.no_grad():
        layer.p_raw.fill_(-30.0)
    assert bool((layer.p >= layer.p_floor).all()) and bool((layer.p - layer.p_floor < 1e-12).all())
    (grad,) = torch.autograd.grad(out.sum(), p_raw)
    assert grad.abs().max() < 1e-10  # softplus'(-30) = 1e-13: the floor is smooth, not a clamp


@pytest.mark.parametrize("transposed", [False, True])
def test_fast_backward_equals_composite_backward(transposed):
    """The hand-written backward and autograd through the composite give the same gradients (float64)."""
    config = (SCST2D_CONFIGS if transposed else SCS2D_CONFIGS)[2]
    layer, x = (make_scst2d if transposed else make_scs2d)(config, True, True)
    x, w, p, q, b = _grad_inputs(layer, x)
    if transposed:
        a = scst2d_args(layer)
        conv = (a["stride"], a["padding"], a["output_padding"], a["dilation"], a["groups"], EPS, torch.float64)
        inputs = (x, w, p, q, b)
        fast = SF._SCSTranspose2dFunction.apply(x, w, SF._sum_w2_per_group(w, 2, torch.float64), p, q, b, *conv)
        slow = SF._scst2d_composite(x, w, SF._sum_w2_per_group(w, 2, torch.float64), p, q, b, *conv)
    else:
        a = scs2d_args(layer)
        conv = (a["stride"], a["padding"], a["dilation"], a["groups"], EPS, torch.float64)
        inputs = (x, w, p, q, b)
        fast = SF._SCS2dFunction.apply(*inputs, *conv)
        slow = SF._scs2d_composite(*inputs, *conv)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-14)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [t for t in inputs], g)
    grads_slow = torch.autograd.grad(slow, [t for t in inputs], g)
    for gf, gs in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-9, atol=1e-12)
