"""Direct, loop-based evaluations of the SCS formulas, written from the definitions and nothing else.

Slow on purpose: every output is built from an explicit list of (input value, weight tap) pairs, so these
functions check the convolution-based implementations without sharing any of their tricks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sharpen(c: float, p: float | None, eps: float) -> float:
    if p is None:
        return c
    sign = (c > 0) - (c < 0)
    return sign * (abs(c) + eps) ** p


def scs2d_reference(
    x: Tensor,
    w: Tensor,
    p: Tensor | None,
    q: float,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Returns (y, c) for SCS2d by looping over every output and every tap of its window."""
    batch, _channels, height, width = x.shape
    out_channels, cg, kh, kw = w.shape
    og = out_channels // groups
    out_h = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float64)
    c_all = torch.zeros_like(y)
    for b in range(batch):
        for o in range(out_channels):
            g = o // og
            w_o = w[o].double()
            w_norm = math.sqrt(float((w_o**2).sum()) + eps)
            for i in range(out_h):
                for j in range(out_w):
                    dot = 0.0
                    sq = 0.0
                    for ci in range(cg):
                        for a in range(kh):
                            for bb in range(kw):
                                r = i * stride[0] - padding[0] + a * dilation[0]
                                s = j * stride[1] - padding[1] + bb * dilation[1]
                                inside = 0 <= r < height and 0 <= s < width  # padding contributes zeros
                                v = float(x[b, g * cg + ci, r, s]) if inside else 0.0
                                dot += float(w_o[ci, a, bb]) / w_norm * v
                                sq += v * v
                    c = dot / (math.sqrt(sq + eps) + q)
                    c_all[b, o, i, j] = c
                    y[b, o, i, j] = _sharpen(c, None if p is None else float(p[o]), eps) + (
                        0.0 if bias is None else float(bias[o])
                    )
    return y, c_all


def scst2d_reference(
    x: Tensor,
    w: Tensor,
    p: Tensor | None,
    q: float,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Returns (y, c) for SCSTranspose2d from the explicit set S of (input, tap) pairs of each output."""
    batch, in_channels, height, width = x.shape
    _, og, kh, kw = w.shape
    cg = in_channels // groups
    out_channels = og * groups
    out_h = (height - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    out_w = (width - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    pairs: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    # conv_transpose2d: input (r, s) with tap (a, bb) lands on output (r*stride - pad + a*dil, ...).
    for r in range(height):
        for s in range(width):
            for a in range(kh):
                for bb in range(kw):
                    oy = r * stride[0] - padding[0] + a * dilation[0]
                    ox = s * stride[1] - padding[1] + bb * dilation[1]
                    if 0 <= oy < out_h and 0 <= ox < out_w:
                        pairs.setdefault((oy, ox), []).append((r, s, a, bb))
    y = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float64)
    c_all = torch.zeros_like(y)
    for b in range(batch):
        for o in range(out_channels):
            g, oo = divmod(o, og)
            for oy in range(out_h):
                for ox in range(out_w):
                    dot = sx = sw = 0.0
                    for r, s, a, bb in pairs.get((oy, ox), []):
                        for ci in range(g * cg, (g + 1) * cg):
                            xv = float(x[b, ci, r, s])
                            wv = float(w[ci, oo, a, bb])
                            dot += xv * wv
                            sx += xv * xv
                            sw += wv * wv
                    c = dot / ((math.sqrt(sx + eps) + q) * math.sqrt(sw + eps))
                    c_all[b, o, oy, ox] = c
                    y[b, o, oy, ox] = _sharpen(c, None if p is None else float(p[o]), eps) + (
                        0.0 if bias is None else float(bias[o])
                    )
    return y, c_all


def max_abs_pool2d_reference(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """Largest-magnitude element of each window (first one on ties), with its sign."""
    batch, channels, height, width = x.shape
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    out = torch.zeros(batch, channels, out_h, out_w, dtype=x.dtype)
    for b in range(batch):
        for ch in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    best = None
                    for a in range(kernel):
                        for bb in range(kernel):
                            r, s = i * stride - padding + a, j * stride - padding + bb
                            if 0 <= r < height and 0 <= s < width:
                                v = float(x[b, ch, r, s])
                                if best is None or abs(v) > abs(best):
                                    best = v
                    out[b, ch, i, j] = best
    return out
