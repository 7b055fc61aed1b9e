"""SCS layers as modules, siblings of ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.MaxPool2d``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as SF
from .functional import IntPair, _pair

__all__ = [
    "MaxAbsPool2d",
    "SCS2d",
    "SCSTranspose2d",
    "SharpenedCosineSimilarity2d",
    "SharpenedCosineSimilarityTranspose2d",
]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _inverse_softplus(value: float | Tensor) -> float | Tensor:
    """The raw parameter whose softplus is ``value`` (> 0); tensors are computed in float64, as floats are."""
    if isinstance(value, Tensor):
        wide = value.double()
        return (wide + torch.log(-torch.expm1(-wide))).to(value.dtype)
    return value + math.log(-math.expm1(-value))


class _SCSBase(nn.Module):
    """Parameters and options shared by the SCS layers: weight, exponent p, norm floor q, bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        weight_shape: tuple[int, ...],
        groups: int,
        bias: bool,
        p_init: float,
        q_init: float,
        p_floor: float,
        eps: float,
        sharpen: bool,
        device,
        dtype,
        p_init_max: float | None = None,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}")
        if groups <= 0 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if sharpen and not p_init > p_floor:
            raise ValueError(f"p_init ({p_init}) must be greater than p_floor ({p_floor})")
        if p_floor < 0:
            raise ValueError(f"p_floor must be >= 0, got {p_floor}")
        if p_init_max is not None and not p_init_max >= p_init:
            raise ValueError(f"p_init_max ({p_init_max}) must be at least p_init ({p_init})")
        if not q_init > 0:
            raise ValueError(f"q_init must be > 0 (q is kept positive by a softplus), got {q_init}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.groups = groups
        self.p_init, self.q_init, self.p_floor = float(p_init), float(q_init), float(p_floor)
        self.p_init_max = None if p_init_max is None else float(p_init_max)
        self.eps = float(eps)
        self.sharpen = bool(sharpen)
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.p_raw = nn.Parameter(torch.empty(out_channels, **factory)) if sharpen else None
        self.q_raw = nn.Parameter(torch.empty((), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like the torch counterpart (weight), with p = p_init (or, with ``p_init_max``, drawn
        uniformly from [p_init, p_init_max] per output channel), q = q_init and a zero bias.

        Only the direction of each filter matters (it is normalised), so the weight scale only sets the
        optimiser's angular step, as it does for a convolution.
        """
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            if self.p_raw is not None and self.p_init_max is None:
                self.p_raw.fill_(_inverse_softplus(self.p_init - self.p_floor))
            elif self.p_raw is not None:
                p0 = torch.empty_like(self.p_raw).uniform_(self.p_init, self.p_init_max)
                self.p_raw.copy_(_inverse_softplus(p0 - self.p_floor))
            self.q_raw.fill_(_inverse_softplus(self.q_init))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def p(self) -> Tensor:
        """Effective exponent per output channel, ``p_floor + softplus(p_raw)``; all ones when not sharpening."""
        if self.p_raw is None:
            return torch.ones(self.out_channels, device=self.q_raw.device, dtype=self.q_raw.dtype)
        return self.p_floor + F.softplus(self.p_raw)

    @property
    def q(self) -> Tensor:
        """Effective floor on the patch norm, ``softplus(q_raw) > 0`` (a scalar tensor)."""
        return F.softplus(self.q_raw)

    def _p_or_none(self) -> Tensor | None:
        return None if self.p_raw is None else self.p

    def _scs_repr(self) -> str:
        p0 = self.p_init if self.p_init_max is None else f"U[{self.p_init}, {self.p_init_max}]"
        text = f", p_init={p0}, p_floor={self.p_floor}" if self.sharpen else ", sharpen=False"
        return f"{text}, q_init={self.q_init}"


class SharpenedCosineSimilarity2d(_SCSBase):
    r"""Sharpened cosine similarity over 2-D patches, a drop-in sibling of :class:`torch.nn.Conv2d`.

    For output channel ``o`` at location ``(i, j)``, with ``P`` every input value of ``o``'s group under the
    kernel window (stride, padding and dilation as a convolution; zero padding contributes zeros)::

        w_hat = w_o / sqrt(sum(w_o ** 2) + eps)
        c     = <w_hat, x_P> / (sqrt(sum(x_P ** 2) + eps) + q)        |c| <= 1
        y     = sign(c) * (|c| + eps) ** p_o  (+ bias_o)              (y = c when sharpen=False)

    ``p = p_floor + softplus(p_raw)`` (one per output channel) and ``q = softplus(q_raw)`` (one per layer)
    are learned; both constraints are smooth, so nothing is clamped in ``forward``. Following SCS practice,
    no normalisation or activation is needed after the layer.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode:
            as for :class:`torch.nn.Conv2d`, except that ``bias`` defaults to ``False``.
        p_init: initial exponent (> ``p_floor``).
        p_init_max: if given, each output channel's initial exponent is drawn uniformly from
            ``[p_init, p_init_max]`` (as the reference SCS layer does with [1, 3]) instead of all being ``p_init``.
        q_init: initial norm floor (> 0).
        p_floor: lower bound of ``p``. Below 1 the gradient ``p * (|c| + eps) ** (p - 1)`` grows large near
            ``c = 0``.
        eps: constant inside the square roots and the power.
        sharpen: ``False`` gives plain cosine similarity (no ``p``).

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, sizes as for ``nn.Conv2d``.

    Attributes:
        weight: ``(out_channels, in_channels / groups, kH, kW)``.
        p: effective exponent ``(out_channels,)``; q: effective norm floor (scalar); eps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        p_init: float = 1.5,
        q_init: float = 0.1,
        p_floor: float = 1.0,
        eps: float = 1e-6,
        sharpen: bool = True,
        device=None,
        dtype=None,
        p_init_max: float | None = None,
    ) -> None:
        kernel = _pair(kernel_size, "kernel_size")
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            (out_channels, in_channels // max(groups, 1), *kernel),
            groups,
            bias,
            p_init,
            q_init,
            p_floor,
            eps,
            sharpen,
            device,
            dtype,
            p_init_max,
        )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
        self.stride = _pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.padding_mode = padding_mode
        if padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided SCS layers (as for nn.Conv2d)")

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for non-zero padding modes."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            return (totals[1] // 2, totals[1] - totals[1] // 2, totals[0] // 2, totals[0] - totals[0] // 2)
        ph, pw = self.padding  # type: ignore[misc]
        return (pw, pw, ph, ph)

    def forward(self, input: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return SF.sharpened_cosine_similarity2d(
            input,
            self.weight,
            self._p_or_none(),
            self.q,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            self.eps,
        )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text + self._scs_repr()


class SharpenedCosineSimilarityTranspose2d(_SCSBase):
    r"""Transposed sharpened cosine similarity, a drop-in sibling of :class:`torch.nn.ConvTranspose2d`.

    For output channel ``o`` at output location ``(Y, X)``, let ``S`` be the (input value, weight tap) pairs
    that ``conv_transpose2d`` multiplies together to form that output::

        c = sum_S(w * x) / ((sqrt(sum_S x ** 2 + eps) + q) * sqrt(sum_S w ** 2 + eps))     |c| <= 1
        y = sign(c) * (|c| + eps) ** p_o  (+ bias_o)                                        (y = c when sharpen=False)

    Each output is a true cosine between the inputs and the weight taps that meet there, whatever the
    stride phase or border, so the layer has no built-in checkerboard of output scales. ``p`` and ``q`` are
    parametrised as in :class:`SharpenedCosineSimilarity2d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias, dilation,
        padding_mode: as for :class:`torch.nn.ConvTranspose2d` (same order), except that ``bias`` defaults to
            ``False``; only ``padding_mode='zeros'`` exists, as in torch.
        p_init, q_init, p_floor, eps, sharpen, p_init_max: as for :class:`SharpenedCosineSimilarity2d`.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``
        - Output: ``(N, C_out, H_out, W_out)``, sizes as for ``nn.ConvTranspose2d``; ``forward`` accepts
          ``output_size`` like it.

    Attributes:
        weight: ``(in_channels, out_channels / groups, kH, kW)``.
        p, q, eps: as for :class:`SharpenedCosineSimilarity2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
        groups: int = 1,
        bias: bool = False,
        dilation: IntPair = 1,
        padding_mode: str = "zeros",
        p_init: float = 1.5,
        q_init: float = 0.1,
        p_floor: float = 1.0,
        eps: float = 1e-6,
        sharpen: bool = True,
        device=None,
        dtype=None,
        p_init_max: float | None = None,
    ) -> None:
        kernel = _pair(kernel_size, "kernel_size")
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            (in_channels, out_channels // max(groups, 1), *kernel),
            groups,
            bias,
            p_init,
            q_init,
            p_floor,
            eps,
            sharpen,
            device,
            dtype,
            p_init_max,
        )
        if padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported for transposed layers, got {padding_mode!r}")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.output_padding = _pair(output_padding, "output_padding")
        self.dilation = _pair(dilation, "dilation")
        self.padding_mode = padding_mode
        for op, s, d in zip(self.output_padding, self.stride, self.dilation, strict=True):
            if op >= max(s, d):
                raise ValueError(f"output_padding {self.output_padding} must be smaller than stride or dilation")

    def _output_padding_for(self, input: Tensor, output_size: list[int] | tuple[int, ...] | None) -> tuple[int, int]:
        if output_size is None:
            return self.output_padding
        size = list(output_size)[-2:]
        if len(size) != 2:
            raise ValueError(f"output_size must end with (H_out, W_out), got {output_size!r}")
        padding = []
        for dim in range(2):
            n, k, s, p, d = (
                input.shape[-2 + dim],
                self.kernel_size[dim],
                self.stride[dim],
                self.padding[dim],
                self.dilation[dim],
            )
            smallest = (n - 1) * s - 2 * p + d * (k - 1) + 1
            extra = size[dim] - smallest
            if not 0 <= extra < max(s, d):
                raise ValueError(
                    f"requested output size {tuple(size)} is not reachable: for input {tuple(input.shape[-2:])} it "
                    f"must lie between {smallest} and {smallest + max(s, d) - 1} in dimension {dim}"
                )
            padding.append(extra)
        return (padding[0], padding[1])

    def forward(self, input: Tensor, output_size: list[int] | tuple[int, ...] | None = None) -> Tensor:
        return SF.sharpened_cosine_similarity_transpose2d(
            input,
            self.weight,
            self._p_or_none(),
            self.q,
            self.bias,
            self.stride,
            self.padding,
            self._output_padding_for(input, output_size),
            self.groups,
            self.dilation,
            self.eps,
        )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            text += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text + self._scs_repr()


class MaxAbsPool2d(nn.Module):
    """Like :class:`torch.nn.MaxPool2d`, but returns the element of largest magnitude, with its sign.

    The pooling SCS networks use: a strongly negative response (an anti-match) survives the pooling as
    well as a strongly positive one. Arguments and shapes are those of ``nn.MaxPool2d``.
    """

    def __init__(
        self,
        kernel_size: IntPair,
        stride: IntPair | None = None,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return SF.max_abs_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


SCS2d = SharpenedCosineSimilarity2d
SCSTranspose2d = SharpenedCosineSimilarityTranspose2d
