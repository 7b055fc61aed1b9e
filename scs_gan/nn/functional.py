"""Functional forms of the sharpened cosine similarity (SCS) layers.

The layers score each patch by the cosine of the angle between patch and kernel and then sharpen that
cosine with a learned exponent ``p``, keeping its sign::

    c = dot / (norm_x + q) / norm_w          (a true cosine, |c| <= 1, when q >= 0)
    y = sign(c) * (|c| + eps) ** p           (or y = c when sharpening is off)

Patches are never unfolded: the dot products are one convolution, and the squared patch norms are a window
sum over the channel-summed squares of the input (a one-channel pooling), exactly the formulation that makes
SCS as cheap as the convolution it replaces.

The same maths runs along these paths, which the tests hold to each other:

* on CPU float32 tensors with the fused kernels of ``_kernels`` built, for layers whose window sums
  ``avg_pool2d`` computes (dilation 1, padding at most half the kernel): an autograd function whose forward
  and backward are one C++ call each (weight normalisation, convolutions, window sums and the element-wise
  work in fused loops);
* otherwise a hand-written autograd function for eager execution, which runs the element-wise work in place,
  keeps only the input, the normalised weight, the output and two per-location maps for backward, and skips
  the work for gradients nobody asked for; on CPU float32 tensors its element-wise passes are the fused
  kernels, elsewhere eager torch operations;
* a composite of native operations, used under ``torch.compile`` (so the compiler can fuse it) and to build
  the graph for double backward (R1 penalties): whenever grad mode is on in ``backward`` (``create_graph``),
  the autograd functions recompute their forward pass through the composite and differentiate that.

Numerics: sums of squares, norms, the power and the output are computed in at least float32; under autocast
only the two big convolutions run in the low-precision dtype. ``eps`` sits inside every square root, so
all-zero patches and all-zero filters give finite values and finite gradients. At ``c == 0`` exactly (an
all-zero patch or filter) the output is 0 and the derivative used for ``dy/dc`` is the one-sided limit
``p * eps ** (p - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _kernels

__all__ = [
    "max_abs_pool2d",
    "sharpened_cosine_similarity2d",
    "sharpened_cosine_similarity_transpose2d",
]

IntPair = int | Sequence[int]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _batched(input: Tensor, weight: Tensor) -> Tensor:
    """Check ranks; add the batch dimension to an unbatched ``(C, H, W)`` input."""
    if input.dim() not in (3, 4) or weight.dim() != 4:
        raise ValueError(
            f"expected a 3-D or 4-D input and a 4-D weight, got shapes {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    return input.unsqueeze(0) if input.dim() == 3 else input


def _compute_dtypes(x: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """Return (dtype of the convolutions, dtype of everything else) for input ``x``."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.dtype in (torch.float32, torch.float16, torch.bfloat16):
        conv_dtype = torch.get_autocast_dtype(device_type)
    else:
        conv_dtype = x.dtype
    return conv_dtype, torch.promote_types(conv_dtype, torch.float32)


def _as_tensor(value: Tensor | float, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype)
    return torch.tensor(float(value), dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------------
# Window sums: the per-location squared patch norms, and their adjoint.
# --------------------------------------------------------------------------------------------------------


def _pool_friendly(kernel: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> bool:
    return dilation == (1, 1) and all(2 * p <= k for p, k in zip(padding, kernel, strict=True))


def _window_sum(x2: Tensor, kernel, stride, padding, dilation) -> Tensor:
    """Sum ``x2`` (B, G, H, W) over every kernel window, per channel, like a conv with a ones kernel."""
    if _pool_friendly(kernel, padding, dilation):
        return F.avg_pool2d(x2, kernel, stride, padding, ceil_mode=False, count_include_pad=True, divisor_override=1)
    ones = x2.new_ones(x2.shape[1], 1, *kernel)
    return F.conv2d(x2, ones, None, stride, padding, dilation, groups=x2.shape[1])


def _window_sum_adjoint(g: Tensor, out_hw: tuple[int, int], kernel, stride, padding, dilation) -> Tensor:
    """Adjoint of :func:`_window_sum`: spread each value of ``g`` over the window it summed."""
    shape = (g.shape[0], g.shape[1], *out_hw)
    if _pool_friendly(kernel, padding, dilation):
        expanded = g.new_empty(1).expand(shape)
        return torch.ops.aten.avg_pool2d_backward(g, expanded, kernel, stride, padding, False, True, 1)
    ones = g.new_ones(g.shape[1], 1, *kernel)
    return torch.nn.grad.conv2d_input(shape, ones, g, stride, padding, dilation, groups=g.shape[1])


# --------------------------------------------------------------------------------------------------------
# The sharpening y = sign(c) * (|c| + eps) ** p.
# --------------------------------------------------------------------------------------------------------


class _Sharpen(torch.autograd.Function):
    """Point-wise sharpening for the composite path; its backward is differentiable again."""

    @staticmethod
    def forward(ctx, c: Tensor, p: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        y = torch.sign(c) * torch.exp(p * torch.log(c.abs() + eps))
        ctx.save_for_backward(c, p, y)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        c, p, y = ctx.saved_tensors
        log_a = torch.log(c.abs() + ctx.eps)
        grad_c = g * p * torch.exp((p - 1) * log_a) if ctx.needs_input_grad[0] else None
        grad_p = (g * y * log_a).sum_to_size(p.shape) if ctx.needs_input_grad[1] else None
        return grad_c, grad_p, None


def _sharpen_forward_(c: Tensor, p: Tensor, eps: float) -> Tensor:
    """Return ``sign(c) * (|c| + eps) ** p`` in one new buffer, using in-place passes (``c`` is clobbered)."""
    magnitude = c.abs()
    magnitude.add_(eps).log_().mul_(p).exp_()
    return magnitude.mul_(c.sign_())


def _sharpen_backward(g: Tensor, y: Tensor, p: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of the sharpening from its output alone.

    With ``a = |c| + eps`` and ``|y| = a ** p``: ``dy/dc = p * a ** (p - 1)`` and ``dy/dp = y * log(a)``,
    where ``log(a) = log|y| / p``. Returns ``(grad_c, grad_p, grad_c * c)``; the last one feeds the
    gradient of the normalisation and is ``p * g * y - eps * grad_c * sign(y)``.
    """
    reduce_dims = [d for d in range(g.dim()) if p.shape[d] == 1]
    # |y| >= eps ** p whenever c != 0; clamping there gives c == 0 its one-sided derivative.
    floor = torch.exp(p * math.log(eps)).clamp_min_(torch.finfo(y.dtype).tiny)
    work = y.abs().clamp_min_(floor).log_()  # p * log(a)
    grad_c = torch.mul(work, (p - 1) / p).add_(torch.log(p)).exp_()  # p * a ** (p - 1)
    grad_p = work.mul_(y).mul_(g).sum(reduce_dims, keepdim=True).div_(p)
    grad_c.mul_(g)
    # grad_c * c = p * g * y - eps * grad_c * sign(y), built in the spent buffer to avoid an allocation.
    grad_c_times_c = torch.sign(y, out=work).mul_(grad_c).mul_(-eps / p).addcmul_(g, y).mul_(p)
    return grad_c, grad_p, grad_c_times_c


def _group_square_sum(x: Tensor, groups: int, out_dtype: torch.dtype) -> Tensor:
    """``sum over each group's channels of x ** 2``: ``(B, C, H, W) -> (B, groups, H, W)`` in ``out_dtype``."""
    batch, channels, height, width = x.shape
    if _kernels.usable(x) and x.is_contiguous():
        return (
            _kernels.get()
            .group_square_sum(x.view(batch, channels, height * width), groups)
            .view(batch, groups, height, width)
        )
    wide = x if x.dtype == out_dtype else x.to(out_dtype)
    return wide.square().view(batch, groups, channels // groups, height, width).sum(2)


def _fused_forward_(dot: Tensor, shape5, inv_x: Tensor, inv_w: Tensor | None, p: Tensor | None, eps: float) -> None:
    """The forward's element-wise work in one pass (see ``_kernels``), in place on ``dot``."""
    batch, groups, per_group, out_h, out_w = shape5
    empty = dot.new_empty(0)
    _kernels.get().forward_(
        dot.view(batch, groups, per_group, out_h * out_w),
        inv_x.contiguous().view(batch, groups, out_h * out_w),
        empty if inv_w is None else inv_w.contiguous().view(groups, per_group, out_h * out_w),
        empty if p is None else p.contiguous(),
        eps,
    )


def _fused_backward(g5, y0, shape5, inv_x, inv_w, p, eps, keep_t: bool):
    """(grad_dot, sum over each group's channels of grad_c * c, grad_p, grad_c * c or empty) in one pass."""
    batch, groups, per_group, out_h, out_w = shape5
    flat = (batch, groups, per_group, out_h * out_w)
    empty = y0.new_empty(0)
    grad_dot, t_x, grad_p, t_elem = _kernels.get().backward(
        g5.reshape(flat),
        y0.contiguous().view(flat),
        inv_x.contiguous().view(batch, groups, out_h * out_w),
        empty if inv_w is None else inv_w.contiguous().view(groups, per_group, out_h * out_w),
        empty if p is None else p.contiguous(),
        eps,
        keep_t,
    )
    grad_p = grad_p if p is not None else None
    return grad_dot.view(shape5), t_x, grad_p, (t_elem.view(shape5) if keep_t else None)


def _sharpen_or_identity_backward(g, y, p, eps) -> tuple[Tensor, Tensor | None, Tensor]:
    if p is None:
        return g, None, g * y
    return _sharpen_backward(g, y, p, eps)


def _needs(ctx, index: int) -> bool:
    return bool(ctx.needs_input_grad[index])


def _recompute_grads(ctx, composite, inputs: tuple, g: Tensor) -> tuple:
    """Double-backward path: differentiate the composite forward with a graph attached."""
    wanted = [i for i, t in enumerate(inputs) if t is not None and _needs(ctx, i)]
    with torch.enable_grad():
        out = composite(*inputs)
        grads = torch.autograd.grad(out, [inputs[i] for i in wanted], g, create_graph=True, allow_unused=True)
    result: list[Tensor | None] = [None] * len(inputs)
    for i, grad in zip(wanted, grads, strict=True):
        result[i] = grad
    return tuple(result)


# --------------------------------------------------------------------------------------------------------
# SCS2d
# --------------------------------------------------------------------------------------------------------


def _scs2d_composite(x, w_hat, p, q, bias, stride, padding, dilation, groups, eps, out_dtype):
    """SCS2d from native operations (weight already normalised); see the module docstring."""
    batch, channels, height, width = x.shape
    out_channels = w_hat.shape[0]
    dot = F.conv2d(x, w_hat, None, stride, padding, dilation, groups).to(out_dtype)
    _, _, out_h, out_w = dot.shape
    x2 = x.to(out_dtype).square().view(batch, groups, channels // groups, height, width).sum(2)
    n2 = _window_sum(x2, w_hat.shape[2:], stride, padding, dilation)
    inv = 1.0 / (torch.sqrt(n2 + eps) + q)
    c = (dot.view(batch, groups, out_channels // groups, out_h, out_w) * inv.unsqueeze(2)).view(dot.shape)
    y = c if p is None else _Sharpen.apply(c, p.view(1, -1, 1, 1), eps)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class _SCS2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_hat, p, q, bias, stride, padding, dilation, groups, eps, out_dtype):  # type: ignore[override]
        batch = x.shape[0]
        out_channels = w_hat.shape[0]
        dot = F.conv2d(x, w_hat, None, stride, padding, dilation, groups)
        dot = dot.to(out_dtype)
        _, _, out_h, out_w = dot.shape
        x2 = _group_square_sum(x, groups, out_dtype)
        norm = _window_sum(x2, w_hat.shape[2:], stride, padding, dilation).add_(eps).sqrt_()
        inv = (norm + q).reciprocal_()
        shape5 = (batch, groups, out_channels // groups, out_h, out_w)
        if _kernels.usable(dot):
            _fused_forward_(dot, shape5, inv, None, p, eps)
            y = dot
        else:
            c5 = dot.view(shape5).mul_(inv.unsqueeze(2))
            y5 = c5 if p is None else _sharpen_forward_(c5, p.view(1, groups, -1, 1, 1), eps)
            y = y5.view(dot.shape)
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1))
        ctx.save_for_backward(x, w_hat, p, q, bias, y, inv, norm)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.eps, ctx.out_dtype = eps, out_dtype
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w_hat, p, q, bias, y, inv, norm = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        eps = ctx.eps
        if torch.is_grad_enabled():

            def composite(x_, w_, p_, q_, b_):
                return _scs2d_composite(x_, w_, p_, q_, b_, stride, padding, dilation, groups, eps, ctx.out_dtype)

            grads = _recompute_grads(ctx, composite, (x, w_hat, p, q, bias), g)
            return (*grads, None, None, None, None, None, None)

        batch, out_channels, out_h, out_w = y.shape
        shape5 = (batch, groups, out_channels // groups, out_h, out_w)
        g5 = g.contiguous().view(shape5)
        y0 = y if bias is None else y - bias.view(1, -1, 1, 1)
        # c = dot * inv with inv = 1 / (norm + q) and norm = sqrt(window_sum(x^2) + eps).
        if _kernels.usable(g5, y0):
            grad_dot, t_x, grad_p, _ = _fused_backward(g5, y0, shape5, inv, None, p, eps, keep_t=False)
            grad_norm = t_x.view(inv.shape).mul_(inv).neg_()
        else:
            p5 = None if p is None else p.view(1, groups, -1, 1, 1)
            grad_c, grad_p, gc_c = _sharpen_or_identity_backward(g5, y0.view(shape5), p5, eps)
            grad_norm = gc_c.sum(2).mul_(inv).neg_()
            grad_dot = grad_c * inv.unsqueeze(2) if grad_c is g5 else grad_c.mul_(inv.unsqueeze(2))
        grad_q = grad_norm.sum() if _needs(ctx, 3) else None
        grad_dot = grad_dot.view(y.shape).to(x.dtype)

        grad_x = grad_w = None
        if _needs(ctx, 0) or _needs(ctx, 1):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_dot,
                x,
                w_hat,
                None,
                stride,
                padding,
                dilation,
                False,
                [0, 0],
                groups,
                [_needs(ctx, 0), _needs(ctx, 1), False],
            )
        if grad_x is not None:
            grad_n2 = grad_norm.mul_(0.5).div_(norm)
            grad_x2 = _window_sum_adjoint(grad_n2, x.shape[2:], w_hat.shape[2:], stride, padding, dilation)
            grad_x5 = grad_x.view(batch, groups, -1, *x.shape[2:])
            grad_x5.addcmul_(x.view(grad_x5.shape), grad_x2.unsqueeze(2).to(x.dtype), value=2.0)
        grad_p = grad_p.view(-1) if grad_p is not None and _needs(ctx, 2) else None
        grad_bias = g.sum((0, 2, 3)) if bias is not None and _needs(ctx, 4) else None
        return grad_x, grad_w, grad_p, grad_q, grad_bias, None, None, None, None, None, None


def _normalised(weight: Tensor, eps: float) -> Tensor:
    """Each output filter of a ``(C_out, C_in / groups, kH, kW)`` weight divided by its norm (``eps`` inside)."""
    return weight * torch.rsqrt(weight.square().sum((1, 2, 3), keepdim=True) + eps)


def _whole_layer_usable(x: Tensor, weight: Tensor, kernel, padding, dilation, conv_dtype: torch.dtype) -> bool:
    """Whether a layer runs as one C++ call per direction (``_kernels``): CPU float32 without autocast, window
    sums that ``avg_pool2d`` computes, eager execution, and the kernels built."""
    return (
        conv_dtype == torch.float32
        and weight.dtype == torch.float32
        and _pool_friendly(kernel, padding, dilation)
        and not torch.compiler.is_compiling()
        and _kernels.usable(x)
    )


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


class _SCS2dLayerFunction(torch.autograd.Function):
    """SCS2d from the raw weight in one C++ call per direction (weight normalisation included)."""

    @staticmethod
    def forward(ctx, x, weight, p, q, bias, stride, padding, groups, eps):  # type: ignore[override]
        empty = x.new_empty(0)
        y, w_hat, w_scale, inv, norm = _kernels.get().scs2d_forward(
            x, weight, _empty_if_none(p, empty), q, _empty_if_none(bias, empty), stride, padding, groups, eps
        )
        ctx.save_for_backward(x, weight, w_hat, w_scale, p, q, bias, y, inv, norm)
        ctx.conv = (stride, padding, groups)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, weight, w_hat, w_scale, p, q, bias, y, inv, norm = ctx.saved_tensors
        stride, padding, groups = ctx.conv
        eps = ctx.eps
        if torch.is_grad_enabled():

            def composite(x_, w_, p_, q_, b_):
                w_hat_ = _normalised(w_, eps)
                return _scs2d_composite(x_, w_hat_, p_, q_, b_, stride, padding, (1, 1), groups, eps, torch.float32)

            grads = _recompute_grads(ctx, composite, (x, weight, p, q, bias), g)
            return (*grads, None, None, None, None)
        empty = x.new_empty(0)
        grads = _kernels.get().scs2d_backward(
            g,
            x,
            w_hat,
            w_scale,
            _empty_if_none(p, empty),
            _empty_if_none(bias, empty),
            y,
            inv,
            norm,
            stride,
            padding,
            groups,
            eps,
            [_needs(ctx, i) for i in range(5)],
        )
        return (*grads, None, None, None, None)


def _resolve_conv_padding(x: Tensor, padding, kernel, stride, dilation) -> tuple[Tensor, tuple[int, int]]:
    """Turn ``padding`` (ints or 'valid'/'same') into symmetric ints, zero-padding ``x`` when asymmetric."""
    if not isinstance(padding, str):
        return x, _pair(padding, "padding")
    if padding == "valid":
        return x, (0, 0)
    if padding != "same":
        raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
    if stride != (1, 1):
        raise ValueError("padding='same' is not supported for strided SCS layers (as for nn.Conv2d)")
    totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    left = [t // 2 for t in totals]
    if all(t % 2 == 0 for t in totals):
        return x, (left[0], left[1])
    pads = (left[1], totals[1] - left[1], left[0], totals[0] - left[0])
    return F.pad(x, pads), (0, 0)


def sharpened_cosine_similarity2d(
    input: Tensor,
    weight: Tensor,
    p: Tensor | float | None = None,
    q: Tensor | float = 0.0,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    r"""Sharpened cosine similarity over 2-D patches; the SCS counterpart of :func:`torch.nn.functional.conv2d`.

    For output channel ``o`` at location ``(i, j)``, with ``P`` the patch of ``o``'s input group under the
    kernel window (same stride, padding and dilation as a convolution; zero padding contributes zeros)::

        w_hat = w_o / sqrt(sum(w_o ** 2) + eps)
        c     = <w_hat, x_P> / (sqrt(sum(x_P ** 2) + eps) + q)
        y     = sign(c) * (|c| + eps) ** p_o + bias_o        (y = c + bias_o when p is None)

    Args:
        input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``, the ``nn.Conv2d`` convention; any scale (it is normalised).
        p: exponent per output channel, shape ``(C_out,)`` or a float; ``None`` turns sharpening off.
        q: non-negative floor added to the patch norm (scalar tensor or float).
        bias: optional ``(C_out,)``, added after sharpening.
        stride, padding, dilation, groups: as for ``conv2d``; ``padding`` may be ``'valid'`` or ``'same'``.
        eps: the small constant inside the square roots and the power.

    Returns:
        ``(N, C_out, H_out, W_out)`` with ``conv2d``'s output size. The dtype is at least float32: under
        autocast only the convolution runs in the low-precision dtype.
    """
    unbatched = input.dim() == 3
    input = _batched(input, weight)
    if input.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(
            f"input has {input.shape[1]} channels but weight {tuple(weight.shape)} with groups={groups} expects "
            f"{weight.shape[1] * groups}"
        )
    stride_, dilation_ = _pair(stride, "stride"), _pair(dilation, "dilation")
    input, padding_ = _resolve_conv_padding(input, padding, tuple(weight.shape[2:]), stride_, dilation_)
    conv_dtype, out_dtype = _compute_dtypes(input)
    p_t = None if p is None else _as_tensor(p, out_dtype, input.device).expand(weight.shape[0]).contiguous()
    q_t = _as_tensor(q, out_dtype, input.device).reshape(())
    b_t = None if bias is None else bias.to(out_dtype)
    if _whole_layer_usable(input, weight, tuple(weight.shape[2:]), padding_, dilation_, conv_dtype):
        y = _SCS2dLayerFunction.apply(input.contiguous(), weight, p_t, q_t, b_t, stride_, padding_, groups, eps)
        return y.squeeze(0) if unbatched else y
    x, w_hat = input.to(conv_dtype), _normalised(weight, eps).to(conv_dtype)
    args = (x, w_hat, p_t, q_t, b_t, stride_, padding_, dilation_, groups, eps, out_dtype)
    with torch.autocast(x.device.type, enabled=False):
        y = _scs2d_composite(*args) if torch.compiler.is_compiling() else _SCS2dFunction.apply(*args)
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------------------
# SCSTranspose2d
# --------------------------------------------------------------------------------------------------------


def _sum_w2_per_group(weight: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """Squared weights summed over each group's input channels: ``(groups, C_out / groups, kH, kW)``."""
    in_channels, out_per_group, kh, kw = weight.shape
    return weight.to(dtype).square().view(groups, in_channels // groups, out_per_group, kh, kw).sum(1)


def _scst2d_composite(x, w, w2, p, q, bias, stride, padding, output_padding, dilation, groups, eps, out_dtype):
    """SCSTranspose2d from native operations; see :func:`sharpened_cosine_similarity_transpose2d`."""
    batch, channels, height, width = x.shape
    kernel = w.shape[2:]
    dot = F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation).to(out_dtype)
    _, out_channels, out_h, out_w = dot.shape
    x2 = x.to(out_dtype).square().view(batch, groups, channels // groups, height, width).sum(2)
    ones_k = x2.new_ones(groups, 1, *kernel)
    n2 = F.conv_transpose2d(x2, ones_k, None, stride, padding, output_padding, groups, dilation)
    ones_x = x2.new_ones(1, groups, height, width)
    wn2 = F.conv_transpose2d(ones_x, w2, None, stride, padding, output_padding, groups, dilation)
    inv_x = 1.0 / (torch.sqrt(n2 + eps) + q)
    inv_w = torch.rsqrt(wn2 + eps)
    shape5 = (batch, groups, out_channels // groups, out_h, out_w)
    c = (dot.view(shape5) * inv_x.unsqueeze(2) * inv_w.view(1, *shape5[1:])).view(dot.shape)
    y = c if p is None else _Sharpen.apply(c, p.view(1, -1, 1, 1), eps)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _window_scatter(x2: Tensor, out_hw, kernel, stride, padding, output_padding, dilation) -> Tensor:
    """``conv_transpose2d(x2, ones)`` per channel: the adjoint of a window sum, at the transposed output size."""
    del output_padding  # fixed by out_hw
    return _window_sum_adjoint(x2, out_hw, kernel, stride, padding, dilation)


class _SCSTranspose2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, w2, p, q, bias, stride, padding, output_padding, dilation, groups, eps, out_dtype):  # type: ignore[override]
        batch, _, height, width = x.shape
        kernel = tuple(w.shape[2:])
        dot = F.conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation).to(out_dtype)
        _, out_channels, out_h, out_w = dot.shape
        x2 = _group_square_sum(x, groups, out_dtype)
        n2 = _window_scatter(x2, (out_h, out_w), kernel, stride, padding, output_padding, dilation)
        norm = n2.add_(eps).sqrt_()
        inv_x = (norm + q).reciprocal_()
        ones_x = x2.new_ones(1, groups, height, width)
        wn2 = F.conv_transpose2d(ones_x, w2, None, stride, padding, output_padding, groups, dilation)
        inv_w = wn2.add_(eps).rsqrt_()
        shape5 = (batch, groups, out_channels // groups, out_h, out_w)
        if _kernels.usable(dot):
            _fused_forward_(dot, shape5, inv_x, inv_w, p, eps)
            y = dot
        else:
            c5 = dot.view(shape5).mul_(inv_x.unsqueeze(2)).mul_(inv_w.view(1, *shape5[1:]))
            y5 = c5 if p is None else _sharpen_forward_(c5, p.view(1, groups, -1, 1, 1), eps)
            y = y5.view(dot.shape)
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1))
        ctx.save_for_backward(x, w, w2, p, q, bias, y, inv_x, norm, inv_w)
        ctx.conv = (stride, padding, output_padding, dilation, groups)
        ctx.eps, ctx.out_dtype = eps, out_dtype
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, w2, p, q, bias, y, inv_x, norm, inv_w = ctx.saved_tensors
        stride, padding, output_padding, dilation, groups = ctx.conv
        eps = ctx.eps
        if torch.is_grad_enabled():

            def composite(x_, w_, w2_, p_, q_, b_):
                return _scst2d_composite(
                    x_, w_, w2_, p_, q_, b_, stride, padding, output_padding, dilation, groups, eps, ctx.out_dtype
                )

            grads = _recompute_grads(ctx, composite, (x, w, w2, p, q, bias), g)
            return (*grads, None, None, None, None, None, None, None)

        batch, out_channels, out_h, out_w = y.shape
        kernel = tuple(w.shape[2:])
        shape5 = (batch, groups, out_channels // groups, out_h, out_w)
        g5 = g.contiguous().view(shape5)
        y0 = y if bias is None else y - bias.view(1, -1, 1, 1)
        inv_w5 = inv_w.view(1, *shape5[1:])
        # c = dot * inv_x * inv_w; inv_x = 1 / (norm + q); inv_w = (wn2 + eps) ** -1/2.
        fused = _kernels.usable(g5, y0)
        if fused:
            grad_dot, t_x, grad_p, gc_c = _fused_backward(g5, y0, shape5, inv_x, inv_w, p, eps, keep_t=True)
            grad_norm = t_x.view(inv_x.shape).mul_(inv_x).neg_()
        else:
            p5 = None if p is None else p.view(1, groups, -1, 1, 1)
            grad_c, grad_p, gc_c = _sharpen_or_identity_backward(g5, y0.view(shape5), p5, eps)
            grad_norm = gc_c.sum(2).mul_(inv_x).neg_()
        grad_q = grad_norm.sum() if _needs(ctx, 4) else None
        grad_w2 = None
        if _needs(ctx, 2):
            grad_wn2 = gc_c.sum(0, keepdim=True).mul_(inv_w5).mul_(inv_w5).mul_(-0.5)
            grad_wn2 = grad_wn2.view(1, out_channels, out_h, out_w)
            ones_x = x.new_ones(1, groups, *x.shape[2:], dtype=grad_wn2.dtype)
            _, grad_w2, _ = torch.ops.aten.convolution_backward(
                grad_wn2,
                ones_x,
                w2,
                None,
                stride,
                padding,
                dilation,
                True,
                output_padding,
                groups,
                [False, True, False],
            )
        if not fused:
            grad_dot = grad_c * inv_x.unsqueeze(2) if grad_c is g5 else grad_c.mul_(inv_x.unsqueeze(2))
            grad_dot = grad_dot.mul_(inv_w5)
        grad_dot = grad_dot.view(y.shape).to(x.dtype)

        grad_x = grad_w = None
        if _needs(ctx, 0) or _needs(ctx, 1):
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_dot,
                x,
                w,
                None,
                stride,
                padding,
                dilation,
                True,
                output_padding,
                groups,
                [_needs(ctx, 0), _needs(ctx, 1), False],
            )
        if grad_x is not None:
            grad_n2 = grad_norm.mul_(0.5).div_(norm)
            grad_x2 = _window_sum(grad_n2, kernel, stride, padding, dilation)
            grad_x5 = grad_x.view(batch, groups, -1, *x.shape[2:])
            grad_x5.addcmul_(x.view(grad_x5.shape), grad_x2.unsqueeze(2).to(x.dtype), value=2.0)
        grad_p = grad_p.view(-1) if grad_p is not None and _needs(ctx, 3) else None
        grad_bias = g.sum((0, 2, 3)) if bias is not None and _needs(ctx, 5) else None
        return grad_x, grad_w, grad_w2, grad_p, grad_q, grad_bias, None, None, None, None, None, None, None


class _SCSTranspose2dLayerFunction(torch.autograd.Function):
    """SCSTranspose2d in one C++ call per direction (the squared weight taps included)."""

    @staticmethod
    def forward(ctx, x, w, p, q, bias, stride, padding, output_padding, groups, eps):  # type: ignore[override]
        empty = x.new_empty(0)
        y, w2, inv_x, norm, inv_w = _kernels.get().scst2d_forward(
            x, w, _empty_if_none(p, empty), q, _empty_if_none(bias, empty), stride, padding, output_padding, groups, eps
        )
        ctx.save_for_backward(x, w, w2, p, q, bias, y, inv_x, norm, inv_w)
        ctx.conv = (stride, padding, output_padding, groups)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, w2, p, q, bias, y, inv_x, norm, inv_w = ctx.saved_tensors
        stride, padding, output_padding, groups = ctx.conv
        eps = ctx.eps
        if torch.is_grad_enabled():

            def composite(x_, w_, p_, q_, b_):
                w2_ = _sum_w2_per_group(w_, groups, torch.float32)
                return _scst2d_composite(
                    x_, w_, w2_, p_, q_, b_, stride, padding, output_padding, (1, 1), groups, eps, torch.float32
                )

            grads = _recompute_grads(ctx, composite, (x, w, p, q, bias), g)
            return (*grads, None, None, None, None, None)
        empty = x.new_empty(0)
        grads = _kernels.get().scst2d_backward(
            g,
            x,
            w,
            w2,
            _empty_if_none(p, empty),
            _empty_if_none(bias, empty),
            y,
            inv_x,
            norm,
            inv_w,
            stride,
            padding,
            output_padding,
            groups,
            eps,
            [_needs(ctx, i) for i in range(5)],
        )
        return (*grads, None, None, None, None, None)


def _transpose_output_size(in_hw, kernel, stride, padding, output_padding, dilation) -> tuple[int, int]:
    return tuple(  # type: ignore[return-value]
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, p, op, d in zip(in_hw, kernel, stride, padding, output_padding, dilation, strict=True)
    )


def sharpened_cosine_similarity_transpose2d(
    input: Tensor,
    weight: Tensor,
    p: Tensor | float | None = None,
    q: Tensor | float = 0.0,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_padding: IntPair = 0,
    groups: int = 1,
    dilation: IntPair = 1,
    eps: float = 1e-6,
) -> Tensor:
    r"""Transposed sharpened cosine similarity; the SCS counterpart of :func:`torch.nn.functional.conv_transpose2d`.

    For output channel ``o`` at output location ``(Y, X)``, let ``S`` be the set of (input value, weight tap)
    pairs that ``conv_transpose2d`` multiplies together to form that output. Then::

        dot = sum_S w * x
        c   = dot / ((sqrt(sum_S x ** 2 + eps) + q) * sqrt(sum_S w ** 2 + eps))
        y   = sign(c) * (|c| + eps) ** p_o + bias_o        (y = c + bias_o when p is None)

    so every output is a true cosine between the inputs and the weight taps that meet there, at every stride
    phase and border. The three sums are ``conv_transpose2d(x, w)``, ``conv_transpose2d(sum_c x ** 2, ones)``
    and ``conv_transpose2d(ones, w ** 2)``. An output that no tap reaches is 0.

    Args:
        input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        weight: ``(C_in, C_out / groups, kH, kW)``, the ``nn.ConvTranspose2d`` convention.
        p, q, bias, eps: as for :func:`sharpened_cosine_similarity2d`.
        stride, padding, output_padding, groups, dilation: as for ``conv_transpose2d`` (and in its order).

    Returns:
        ``(N, C_out, H_out, W_out)`` with ``conv_transpose2d``'s output size, in at least float32.
    """
    unbatched = input.dim() == 3
    input = _batched(input, weight)
    if input.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ValueError(
            f"input has {input.shape[1]} channels but weight {tuple(weight.shape)} expects {weight.shape[0]}"
            f" (groups={groups})"
        )
    stride_, padding_ = _pair(stride, "stride"), _pair(padding, "padding")
    output_padding_, dilation_ = _pair(output_padding, "output_padding"), _pair(dilation, "dilation")
    for op, s, d in zip(output_padding_, stride_, dilation_, strict=True):
        if op >= max(s, d):
            raise ValueError(f"output_padding {output_padding_} must be smaller than stride or dilation")
    out_hw = _transpose_output_size(input.shape[2:], weight.shape[2:], stride_, padding_, output_padding_, dilation_)
    if min(out_hw) < 1:
        raise ValueError(f"output size {out_hw} is too small for input {tuple(input.shape)}")
    conv_dtype, out_dtype = _compute_dtypes(input)
    out_channels = weight.shape[1] * groups
    p_t = None if p is None else _as_tensor(p, out_dtype, input.device).expand(out_channels).contiguous()
    q_t = _as_tensor(q, out_dtype, input.device).reshape(())
    b_t = None if bias is None else bias.to(out_dtype)
    if _whole_layer_usable(input, weight, tuple(weight.shape[2:]), padding_, dilation_, conv_dtype):
        y = _SCSTranspose2dLayerFunction.apply(
            input.contiguous(), weight, p_t, q_t, b_t, stride_, padding_, output_padding_, groups, eps
        )
        return y.squeeze(0) if unbatched else y
    x, w = input.to(conv_dtype), weight.to(conv_dtype)
    w2 = _sum_w2_per_group(weight, groups, out_dtype)
    args = (x, w, w2, p_t, q_t, b_t, stride_, padding_, output_padding_, dilation_, groups, eps, out_dtype)
    with torch.autocast(x.device.type, enabled=False):
        y = _scst2d_composite(*args) if torch.compiler.is_compiling() else _SCSTranspose2dFunction.apply(*args)
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------------------
# MaxAbsPool2d
# --------------------------------------------------------------------------------------------------------


def max_abs_pool2d(
    input: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Like :func:`torch.nn.functional.max_pool2d`, but keeps the element of largest magnitude, with its sign.

    Ties in magnitude go to the first element in the window (row-major), as ``max_pool2d`` does. Gradients
    flow to the selected element only. With ``return_indices`` the flat indices into each ``H * W`` plane
    are returned too, as ``max_pool2d`` returns them.
    """
    stride = kernel_size if stride is None or (not isinstance(stride, int) and len(stride) == 0) else stride
    with torch.no_grad():
        _, indices = F.max_pool2d(input.abs(), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)
    out = input.flatten(-2).gather(-1, indices.flatten(-2)).view(indices.shape)
    return (out, indices) if return_indices else out
