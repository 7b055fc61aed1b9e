"""Fused CPU kernels for the element-wise work of the SCS layers (float32), compiled on first use.

On a CPU every element-wise pass over a layer's output is a trip through memory, and the eager layers need
about 25 of them per forward+backward. These three kernels do the same maths in one pass each:

* forward: ``y = sign(c) * (|c| + eps) ** p`` with ``c = dot * inv_x (* inv_w)``, in place on ``dot``;
* the channel-summed squares of the input per group (the patch norms' ingredient), without a temporary;
* backward: from the output ``y`` and the incoming gradient, the gradient of ``dot``, the sum over each
  group's output channels of ``grad_c * c`` (for the norm's gradient), the gradient of ``p``, and optionally
  ``grad_c * c`` itself (the transposed layer sums it over the batch).

Around them, each layer's whole forward and backward (the weight normalisation or the transposed layer's
tap norms, the convolutions, the window sums and the kernels) is one C++ function per direction
(``scs2d_forward``/``scs2d_backward``, ``scst2d_forward``/``scst2d_backward``): in Python that glue was a few
dozen small operations and autograd nodes per layer and call, which cost more than the kernels themselves.
Their convolutions call ATen, except on the shapes where oneDNN is several times slower than a plain matrix
product (one input channel in backward; a transposed layer with one output channel or on a 1x1 input): those
take an im2col + GEMM route (``dot_conv2d_backward``, ``dot_conv_transpose2d``,
``dot_conv_transpose2d_backward``; ``set_gemm_routes(False)`` turns it off, for benchmarks).

They are compiled with the system C++ compiler through ``torch.utils.cpp_extension`` the first time a layer
runs on the CPU (30-90 s, depending on the CPU), into a folder under ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) whose name is a hash of everything that changes the binary: the source, the
torch version and its include paths, the flags and the compiler. Two Python environments therefore get a
folder each and build once each, instead of rebuilding one shared folder in turn; a folder is never rebuilt
in place, so no process loads a library while another rewrites it (concurrent first builds of one folder
wait on torch's build lock). Where building fails - no compiler, no ninja - the layers use the eager
implementation (same maths, more passes) and say so once. ``SCS_GAN_KERNELS=eager`` disables them;
``SCS_GAN_KERNELS=fused`` makes a failed build an error. The maths is that of ``functional._sharpen_forward_``
and ``functional._sharpen_backward``; the tests hold the fused and eager paths to each other.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cfloat>
#include <cmath>
#include <vector>

namespace {

template <bool kSharpen, bool kHasW>
void row_forward(float* __restrict row, const float* __restrict xr, const float* __restrict wr, float pv, float eps,
                 int64_t S) {
  for (int64_t s = 0; s < S; ++s) {
    const float c = kHasW ? row[s] * xr[s] * wr[s] : row[s] * xr[s];
    if (kSharpen) {
      const float m = expf(pv * logf(fabsf(c) + eps));
      row[s] = (float)((c > 0.0f) - (c < 0.0f)) * m;
    } else {
      row[s] = c;
    }
  }
}

template <bool kSharpen, bool kHasW>
void forward_rows(float* dot, const float* inv_x, const float* inv_w, const float* p, float eps,
                  int64_t G, int64_t O, int64_t S, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t o = r % O, bg = r / O, g = bg % G;
    row_forward<kSharpen, kHasW>(dot + r * S, inv_x + bg * S, kHasW ? inv_w + (g * O + o) * S : nullptr,
                                 kSharpen ? p[g * O + o] : 1.0f, eps, S);
  }
}

// One output row (fixed b, g, o) of the backward pass; every pointer is its own array, so the loop vectorises
// (expf/logf through glibc's libmvec). Returns the row's contribution to grad_p * p.
template <bool kHasW, bool kKeepT>
float row_backward_sharpen(const float* __restrict gr, const float* __restrict yr, const float* __restrict xr,
                           const float* __restrict wr, float* __restrict dr, float* __restrict tx,
                           float* __restrict te, float pv, float eps, int64_t S) {
  const float floor_y = fmaxf(expf(pv * logf(eps)), FLT_MIN);
  const float ratio = (pv - 1.0f) / pv;
  float acc = 0.0f;
  for (int64_t s = 0; s < S; ++s) {
    const float gy = gr[s] * yr[s];
    const float L = logf(fmaxf(fabsf(yr[s]), floor_y));  // p * log(|c| + eps)
    const float gc = gr[s] * pv * expf(L * ratio);       // grad_c = g * p * a^(p - 1)
    const float sgn = (float)((yr[s] > 0.0f) - (yr[s] < 0.0f));
    const float t = pv * gy - eps * gc * sgn;              // grad_c * c
    acc += gy * L;
    dr[s] = kHasW ? gc * xr[s] * wr[s] : gc * xr[s];
    tx[s] += t;
    if (kKeepT) te[s] = t;
  }
  return acc;
}

template <bool kHasW, bool kKeepT>
void row_backward_plain(const float* __restrict gr, const float* __restrict yr, const float* __restrict xr,
                        const float* __restrict wr, float* __restrict dr, float* __restrict tx,
                        float* __restrict te, int64_t S) {
  for (int64_t s = 0; s < S; ++s) {
    const float t = gr[s] * yr[s];
    dr[s] = kHasW ? gr[s] * xr[s] * wr[s] : gr[s] * xr[s];
    tx[s] += t;
    if (kKeepT) te[s] = t;
  }
}

template <bool kSharpen, bool kHasW, bool kKeepT>
void backward_groups(const float* grad, const float* y, const float* inv_x, const float* inv_w, const float* p,
                     float eps, int64_t G, int64_t O, int64_t S, float* grad_dot, float* t_x, float* t_elem,
                     float* grad_p_threads, int64_t begin, int64_t end) {
  float* gp = kSharpen ? grad_p_threads + at::get_thread_num() * G * O : nullptr;
  for (int64_t bg = begin; bg < end; ++bg) {
    const int64_t g = bg % G;
    for (int64_t o = 0; o < O; ++o) {
      const int64_t row = bg * O + o;
      const float* wr = kHasW ? inv_w + (g * O + o) * S : nullptr;
      float* te = kKeepT ? t_elem + row * S : nullptr;
      if (kSharpen) {
        const float pv = p[g * O + o];
        const float acc = row_backward_sharpen<kHasW, kKeepT>(
            grad + row * S, y + row * S, inv_x + bg * S, wr, grad_dot + row * S, t_x + bg * S, te, pv, eps, S);
        gp[g * O + o] += acc / pv;
      } else {
        row_backward_plain<kHasW, kKeepT>(grad + row * S, y + row * S, inv_x + bg * S, wr, grad_dot + row * S,
                                          t_x + bg * S, te, S);
      }
    }
  }
}

void row_add_square(const float* __restrict x, float* __restrict acc, int64_t S) {
  for (int64_t s = 0; s < S; ++s) acc[s] += x[s] * x[s];
}

}  // namespace

torch::Tensor group_square_sum(torch::Tensor x, int64_t groups) {
  // x: (B, C, S) -> (B, groups, S): sum of squares over each group's channels, without a temporary.
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2), Cg = C / groups;
  auto out = torch::zeros({B, groups, S}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(S * Cg, 1));
  at::parallel_for(0, B * groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      for (int64_t c = 0; c < Cg; ++c) row_add_square(xp + (bg * Cg + c) * S, op + bg * S, S);
    }
  });
  return out;
}

void forward_(torch::Tensor dot, torch::Tensor inv_x, torch::Tensor inv_w, torch::Tensor p, double eps) {
  const int64_t B = dot.size(0), G = dot.size(1), O = dot.size(2), S = dot.size(3);
  const bool sharpen = p.numel() > 0, has_w = inv_w.numel() > 0;
  float* d = dot.data_ptr<float>();
  const float* ix = inv_x.data_ptr<float>();
  const float* iw = has_w ? inv_w.data_ptr<float>() : nullptr;
  const float* pp = sharpen ? p.data_ptr<float>() : nullptr;
  const float e = (float)eps;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(S, 1));
  at::parallel_for(0, B * G * O, grain, [&](int64_t begin, int64_t end) {
    if (sharpen && has_w) forward_rows<true, true>(d, ix, iw, pp, e, G, O, S, begin, end);
    else if (sharpen) forward_rows<true, false>(d, ix, iw, pp, e, G, O, S, begin, end);
    else if (has_w) forward_rows<false, true>(d, ix, iw, pp, e, G, O, S, begin, end);
    else forward_rows<false, false>(d, ix, iw, pp, e, G, O, S, begin, end);
  });
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor y, torch::Tensor inv_x, torch::Tensor inv_w,
                                    torch::Tensor p, double eps, bool keep_t) {
  const int64_t B = y.size(0), G = y.size(1), O = y.size(2), S = y.size(3);
  const bool sharpen = p.numel() > 0, has_w = inv_w.numel() > 0;
  auto grad_dot = torch::empty_like(y);
  auto t_x = torch::zeros({B, G, S}, y.options());
  auto t_elem = keep_t ? torch::empty_like(y) : torch::empty({0}, y.options());
  const int64_t threads = at::get_num_threads();
  auto gp_threads = torch::zeros({sharpen ? threads : 0, G * O}, y.options());
  const float* gr = grad.data_ptr<float>();
  const float* yr = y.data_ptr<float>();
  const float* ix = inv_x.data_ptr<float>();
  const float* iw = has_w ? inv_w.data_ptr<float>() : nullptr;
  const float* pp = sharpen ? p.data_ptr<float>() : nullptr;
  float* gd = grad_dot.data_ptr<float>();
  float* tx = t_x.data_ptr<float>();
  float* te = keep_t ? t_elem.data_ptr<float>() : nullptr;
  float* gpt = sharpen ? gp_threads.data_ptr<float>() : nullptr;
  const float e = (float)eps;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(S * O, 1));
  at::parallel_for(0, B * G, grain, [&](int64_t begin, int64_t end) {
#define SCS_CALL(SH, W, K) backward_groups<SH, W, K>(gr, yr, ix, iw, pp, e, G, O, S, gd, tx, te, gpt, begin, end)
    if (sharpen) {
      if (has_w) { if (keep_t) SCS_CALL(true, true, true); else SCS_CALL(true, true, false); }
      else { if (keep_t) SCS_CALL(true, false, true); else SCS_CALL(true, false, false); }
    } else {
      if (has_w) { if (keep_t) SCS_CALL(false, true, true); else SCS_CALL(false, true, false); }
      else { if (keep_t) SCS_CALL(false, false, true); else SCS_CALL(false, false, false); }
    }
#undef SCS_CALL
  });
  auto grad_p = sharpen ? gp_threads.sum(0) : torch::empty({0}, y.options());
  return {grad_dot, t_x, grad_p, t_elem};
}

// ------------------------------------------------------------------------------------------------------
// Whole layers, one call per direction: the glue between the convolutions and the element-wise kernels
// above, which in Python costs a few dozen small operations and autograd nodes per layer and call. Only for
// window sums that avg_pool2d computes (dilation 1, padding at most half the kernel); functional.py checks.
// Optional tensors are passed empty (numel 0); gradients nobody needs come back undefined (None).
// ------------------------------------------------------------------------------------------------------

namespace {

at::Tensor window_sum(const at::Tensor& x2, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  return at::avg_pool2d(x2, kernel, stride, padding, false, true, 1);
}

at::Tensor window_sum_adjoint(const at::Tensor& g, int64_t out_h, int64_t out_w, at::IntArrayRef kernel,
                              at::IntArrayRef stride, at::IntArrayRef padding) {
  auto shape = at::empty({1}, g.options()).expand({g.size(0), g.size(1), out_h, out_w});
  return at::avg_pool2d_backward(g, shape, kernel, stride, padding, false, true, 1);
}

// The squared norm of the weight taps that meet at each output pixel of a transposed layer (dilation 1):
// wn2[o, Y, X] = sum of w2[o, ky, kx] over the taps with Y = iy * s + ky - p and X = ix * s + kx - p for
// some input pixel (iy, ix). Equal to conv_transpose2d(ones, w2) per group, without a convolution call.
at::Tensor tap_norm2(const at::Tensor& w2, int64_t H, int64_t W, int64_t OH, int64_t OW, at::IntArrayRef stride,
                     at::IntArrayRef padding) {
  const int64_t O = w2.size(0) * w2.size(1), KH = w2.size(2), KW = w2.size(3);
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  auto w2c = w2.contiguous();
  auto out = at::zeros({O, OH, OW}, w2.options());
  const float* wp = w2c.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t ky = 0; ky < KH; ++ky) {
      for (int64_t kx = 0; kx < KW; ++kx) {
        const float v = wp[(o * KH + ky) * KW + kx];
        for (int64_t iy = 0; iy < H; ++iy) {
          const int64_t Y = iy * sh + ky - ph;
          if (Y < 0 || Y >= OH) continue;
          float* row = op + (o * OH + Y) * OW;
          for (int64_t ix = 0; ix < W; ++ix) {
            const int64_t X = ix * sw + kx - pw;
            if (X >= 0 && X < OW) row[X] += v;
          }
        }
      }
    }
  }
  return out;
}

// The adjoint of tap_norm2: grad_w2[o, ky, kx] = sum of grad[o, Y, X] over the output pixels tap (ky, kx) reaches.
at::Tensor tap_norm2_adjoint(const at::Tensor& grad, int64_t G, int64_t H, int64_t W, int64_t KH, int64_t KW,
                             at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t O = grad.size(0), OH = grad.size(1), OW = grad.size(2);
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  auto gc = grad.contiguous();
  auto out = at::zeros({G, O / G, KH, KW}, grad.options());
  const float* gp = gc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t ky = 0; ky < KH; ++ky) {
      for (int64_t kx = 0; kx < KW; ++kx) {
        float acc = 0.0f;
        for (int64_t iy = 0; iy < H; ++iy) {
          const int64_t Y = iy * sh + ky - ph;
          if (Y < 0 || Y >= OH) continue;
          const float* row = gp + (o * OH + Y) * OW;
          for (int64_t ix = 0; ix < W; ++ix) {
            const int64_t X = ix * sw + kx - pw;
            if (X >= 0 && X < OW) acc += row[X];
          }
        }
        op[(o * KH + ky) * KW + kx] = acc;
      }
    }
  }
  return out;
}

// im2col for dilation 1: cols[b, (c * KH + ky) * KW + kx, oy * OW + ox] = x[b, c, oy * sh + ky - ph, ox * sw + kx - pw]
// (0 outside the image), with OH, OW the convolution's output size. On D's first layer (batch 64, 1 x 32 x 32)
// ATen's im2col (F.unfold) took 0.67 ms here, a strided copy of the same patches 0.15 ms.
at::Tensor patches(const at::Tensor& x, int64_t KH, int64_t KW, at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
  auto xc = x.contiguous();
  auto cols = at::empty({B, C * KH * KW, OH * OW}, x.options());
  const float* xp = xc.data_ptr<float>();
  float* cp = cols.data_ptr<float>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const float* img = xp + bc * H * W;
      for (int64_t ky = 0; ky < KH; ++ky) {
        for (int64_t kx = 0; kx < KW; ++kx) {
          float* row = cp + (bc * KH * KW + ky * KW + kx) * OH * OW;
          for (int64_t oy = 0; oy < OH; ++oy) {
            const int64_t iy = oy * sh + ky - ph;
            float* out = row + oy * OW;
            if (iy < 0 || iy >= H) {
              for (int64_t ox = 0; ox < OW; ++ox) out[ox] = 0.0f;
              continue;
            }
            const float* in = img + iy * W;
            for (int64_t ox = 0; ox < OW; ++ox) {
              const int64_t ix = ox * sw + kx - pw;
              out[ox] = (ix >= 0 && ix < W) ? in[ix] : 0.0f;
            }
          }
        }
      }
    }
  });
  return cols;
}

// The adjoint of patches (col2im): sums every column entry back onto the pixel it was read from.
at::Tensor patches_adjoint(const at::Tensor& cols, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW,
                           at::IntArrayRef stride, at::IntArrayRef padding) {
  const int64_t B = cols.size(0);
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
  TORCH_CHECK(cols.size(1) == C * KH * KW && cols.size(2) == OH * OW, "patches_adjoint: columns of the wrong shape");
  auto cc = cols.contiguous();
  auto x = at::zeros({B, C, H, W}, cols.options());
  const float* cp = cc.data_ptr<float>();
  float* xp = x.data_ptr<float>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      float* img = xp + bc * H * W;
      for (int64_t ky = 0; ky < KH; ++ky) {
        for (int64_t kx = 0; kx < KW; ++kx) {
          const float* row = cp + (bc * KH * KW + ky * KW + kx) * OH * OW;
          for (int64_t oy = 0; oy < OH; ++oy) {
            const int64_t iy = oy * sh + ky - ph;
            if (iy < 0 || iy >= H) continue;
            float* out = img + iy * W;
            const float* in = row + oy * OW;
            for (int64_t ox = 0; ox < OW; ++ox) {
              const int64_t ix = ox * sw + kx - pw;
              if (ix >= 0 && ix < W) out[ix] += in[ox];
            }
          }
        }
      }
    }
  });
  return x;
}

at::Tensor square_sum(const at::Tensor& x, int64_t groups) {
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  return group_square_sum(x.contiguous().view({B, x.size(1), H * W}), groups).view({B, groups, H, W});
}

}  // namespace

// The convolutions of the layers, with a plain GEMM where oneDNN is slow on the shape. oneDNN handles the
// networks' wide layers well, but a convolution with one input channel (the discriminator's first layer on
// grayscale) is 3-5x slower than im2col + GEMM in backward, a transposed convolution with one output
// channel (the generator's last layer) is 3-5x slower in both directions, and a transposed layer on a 1x1
// input (the generator's first) is one matrix product that oneDNN runs 4x slower (`scs-gan bench` prints
// both routes side by side; docs/PERFORMANCE.md). Those shapes take the GEMM route, the rest call ATen.

static bool gemm_routes = true;  // off only to measure what the routes save (set_gemm_routes)

void set_gemm_routes(bool on) { gemm_routes = on; }

static bool conv_gemm(const at::Tensor& w, int64_t groups) { return gemm_routes && groups == 1 && w.size(1) == 1; }

static bool tconv_dense(const at::Tensor& x, const at::Tensor& w, int64_t groups, at::IntArrayRef padding,
                        at::IntArrayRef output_padding) {
  return gemm_routes && groups == 1 && x.size(2) == 1 && x.size(3) == 1 && padding[0] == 0 && padding[1] == 0 &&
         output_padding[0] == 0 && output_padding[1] == 0;
}

static bool tconv_gemm(const at::Tensor& w, int64_t groups) { return gemm_routes && groups == 1 && w.size(1) == 1; }

// [grad_x, grad_w] of conv2d(x, w) (dilation 1) for the flagged gradients; undefined (None) where not asked for.
std::vector<torch::Tensor> dot_conv2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w,
                                               std::vector<int64_t> stride, std::vector<int64_t> padding,
                                               int64_t groups, bool need_x, bool need_w) {
  if (!conv_gemm(w, groups)) {
    auto grads = at::convolution_backward(g, x, w, c10::nullopt, stride, padding, {1, 1}, false, {0, 0}, groups,
                                          {need_x, need_w, false});
    return {std::get<0>(grads), std::get<1>(grads)};
  }
  const int64_t B = x.size(0), O = w.size(0), K = w.size(1) * w.size(2) * w.size(3);
  auto g3 = g.contiguous().view({B, O, -1});
  at::Tensor grad_x, grad_w;
  if (need_w) {
    auto cols = patches(x, w.size(2), w.size(3), stride, padding);  // [B, K, L]
    grad_w = at::matmul(g3, cols.transpose(1, 2)).sum(0).view(w.sizes());
  }
  if (need_x) {
    auto cols = at::matmul(w.reshape({O, K}).t(), g3);  // [B, K, L]
    grad_x = patches_adjoint(cols, x.size(1), x.size(2), x.size(3), w.size(2), w.size(3), stride, padding);
  }
  return {grad_x, grad_w};
}

// conv_transpose2d(x, w) (dilation 1); w is [Cin, O / groups, KH, KW].
torch::Tensor dot_conv_transpose2d(torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, std::vector<int64_t> output_padding, int64_t groups) {
  const int64_t B = x.size(0), Cin = w.size(0), OK = w.size(1) * w.size(2) * w.size(3);
  if (tconv_dense(x, w, groups, padding, output_padding)) {
    return at::matmul(x.reshape({B, Cin}), w.reshape({Cin, OK})).view({B, w.size(1), w.size(2), w.size(3)});
  }
  if (!tconv_gemm(w, groups)) return at::conv_transpose2d(x, w, {}, stride, padding, output_padding, groups, {1, 1});
  const int64_t OH = (x.size(2) - 1) * stride[0] - 2 * padding[0] + w.size(2) + output_padding[0];
  const int64_t OW = (x.size(3) - 1) * stride[1] - 2 * padding[1] + w.size(3) + output_padding[1];
  auto cols = at::matmul(w.reshape({Cin, OK}).t(), x.contiguous().view({B, Cin, -1}));  // [B, O*KH*KW, H*W]
  return patches_adjoint(cols, w.size(1), OH, OW, w.size(2), w.size(3), stride, padding);
}

// [grad_x, grad_w] of conv_transpose2d(x, w) (dilation 1) for the flagged gradients.
std::vector<torch::Tensor> dot_conv_transpose2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w,
                                                         std::vector<int64_t> stride, std::vector<int64_t> padding,
                                                         std::vector<int64_t> output_padding, int64_t groups,
                                                         bool need_x, bool need_w) {
  const int64_t B = x.size(0), Cin = w.size(0), OK = w.size(1) * w.size(2) * w.size(3);
  const bool dense = tconv_dense(x, w, groups, padding, output_padding);
  if (!dense && !tconv_gemm(w, groups)) {
    auto grads = at::convolution_backward(g, x, w, c10::nullopt, stride, padding, {1, 1}, true, output_padding,
                                          groups, {need_x, need_w, false});
    return {std::get<0>(grads), std::get<1>(grads)};
  }
  // the gradient of the columns: g itself for the dense case, else its im2col patches [B, O*KH*KW, H*W]
  auto gc = dense ? g.contiguous().view({B, OK, 1})
                  : patches(g, w.size(2), w.size(3), stride, padding);
  at::Tensor grad_x, grad_w;
  if (need_x) grad_x = at::matmul(w.reshape({Cin, OK}), gc).view(x.sizes());
  if (need_w) {
    auto x3 = x.contiguous().view({B, Cin, -1});
    grad_w = dense ? at::matmul(x3.view({B, Cin}).t(), gc.view({B, OK})).view(w.sizes())
                   : at::matmul(x3, gc.transpose(1, 2)).sum(0).view(w.sizes());
  }
  return {grad_x, grad_w};
}

// SCS2d forward from the raw weight: returns (y, w_hat, w_scale, inv, norm); w_hat = weight * w_scale.
std::vector<torch::Tensor> scs2d_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor p, torch::Tensor q,
                                         torch::Tensor bias, std::vector<int64_t> stride,
                                         std::vector<int64_t> padding, int64_t groups, double eps) {
  auto w_scale = weight.square().sum({1, 2, 3}, true).add_(eps).rsqrt_();
  auto w_hat = weight * w_scale;
  auto dot = at::conv2d(x, w_hat, {}, stride, padding, {1, 1}, groups).contiguous();
  const int64_t B = x.size(0), O = w_hat.size(0), OH = dot.size(2), OW = dot.size(3);
  auto norm = window_sum(square_sum(x, groups), {w_hat.size(2), w_hat.size(3)}, stride, padding).add_(eps).sqrt_();
  auto inv = (norm + q).reciprocal_();
  auto no_w = torch::empty({0}, x.options());
  forward_(dot.view({B, groups, O / groups, OH * OW}), inv.view({B, groups, OH * OW}), no_w, p, eps);
  if (bias.numel() > 0) dot.add_(bias.view({1, -1, 1, 1}));
  return {dot, w_hat, w_scale, inv, norm};
}

// SCS2d backward: (grad_x, grad_weight, grad_p, grad_q, grad_bias) for the gradients flagged in `needs`.
std::vector<torch::Tensor> scs2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w_hat, torch::Tensor w_scale,
                                          torch::Tensor p, torch::Tensor bias, torch::Tensor y, torch::Tensor inv,
                                          torch::Tensor norm, std::vector<int64_t> stride,
                                          std::vector<int64_t> padding, int64_t groups, double eps,
                                          std::vector<bool> needs) {
  const int64_t B = y.size(0), O = y.size(1), OH = y.size(2), OW = y.size(3), G = groups;
  const bool has_bias = bias.numel() > 0;
  auto y0 = has_bias ? y - bias.view({1, -1, 1, 1}) : y;
  auto parts = backward(g.contiguous().view({B, G, O / G, OH * OW}), y0.contiguous().view({B, G, O / G, OH * OW}),
                        inv.view({B, G, OH * OW}), torch::empty({0}, y.options()), p, eps, false);
  auto grad_norm = parts[1].view(inv.sizes()).mul_(inv).neg_();
  torch::Tensor grad_x, grad_w, grad_p, grad_q, grad_bias;
  if (needs[3]) grad_q = grad_norm.sum();
  if (needs[2] && p.numel() > 0) grad_p = parts[2];
  if (needs[4] && has_bias) grad_bias = g.sum({0, 2, 3});
  if (needs[0] || needs[1]) {
    auto grads = dot_conv2d_backward(parts[0].view(y.sizes()), x, w_hat, stride, padding, groups, needs[0], needs[1]);
    grad_x = grads[0];
    if (needs[1]) {
      // through w_hat = w * (sum w^2 + eps)^(-1/2): grad_w = w_scale * (G - w_hat * sum(G * w_hat))
      auto gw = grads[1];
      grad_w = gw.sub_(w_hat * (gw * w_hat).sum({1, 2, 3}, true)).mul_(w_scale);
    }
  }
  if (needs[0]) {
    auto grad_x2 = window_sum_adjoint(grad_norm.mul_(0.5).div_(norm), x.size(2), x.size(3),
                                      {w_hat.size(2), w_hat.size(3)}, stride, padding);
    auto gx5 = grad_x.view({B, G, -1, x.size(2), x.size(3)});
    gx5.addcmul_(x.view(gx5.sizes()), grad_x2.unsqueeze(2), 2.0);
  }
  return {grad_x, grad_w, grad_p, grad_q, grad_bias};
}

// SCSTranspose2d forward: returns (y, w2, inv_x, norm, inv_w); w2 = the squared weights summed over each
// group's input channels, inv_w the inverse norm of the taps that meet at each output pixel.
std::vector<torch::Tensor> scst2d_forward(torch::Tensor x, torch::Tensor w, torch::Tensor p, torch::Tensor q,
                                          torch::Tensor bias, std::vector<int64_t> stride,
                                          std::vector<int64_t> padding, std::vector<int64_t> output_padding,
                                          int64_t groups, double eps) {
  const int64_t B = x.size(0), Cin = w.size(0), Og = w.size(1), KH = w.size(2), KW = w.size(3), G = groups;
  auto dot = dot_conv_transpose2d(x, w, stride, padding, output_padding, groups).contiguous();
  const int64_t O = dot.size(1), OH = dot.size(2), OW = dot.size(3);
  auto norm = window_sum_adjoint(square_sum(x, groups), OH, OW, {KH, KW}, stride, padding).add_(eps).sqrt_();
  auto inv_x = (norm + q).reciprocal_();
  auto w2 = w.square().view({G, Cin / G, Og, KH, KW}).sum(1);
  auto inv_w = tap_norm2(w2, x.size(2), x.size(3), OH, OW, stride, padding).add_(eps).rsqrt_();
  forward_(dot.view({B, G, O / G, OH * OW}), inv_x.view({B, G, OH * OW}), inv_w.view({G, O / G, OH * OW}), p, eps);
  if (bias.numel() > 0) dot.add_(bias.view({1, -1, 1, 1}));
  return {dot, w2, inv_x, norm, inv_w};
}

// SCSTranspose2d backward: (grad_x, grad_weight, grad_p, grad_q, grad_bias) for the gradients in `needs`.
std::vector<torch::Tensor> scst2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w, torch::Tensor w2,
                                           torch::Tensor p, torch::Tensor bias, torch::Tensor y, torch::Tensor inv_x,
                                           torch::Tensor norm, torch::Tensor inv_w, std::vector<int64_t> stride,
                                           std::vector<int64_t> padding, std::vector<int64_t> output_padding,
                                           int64_t groups, double eps, std::vector<bool> needs) {
  const int64_t B = y.size(0), O = y.size(1), OH = y.size(2), OW = y.size(3), G = groups;
  const int64_t Cin = w.size(0), KH = w.size(2), KW = w.size(3);
  const bool has_bias = bias.numel() > 0;
  auto y0 = has_bias ? y - bias.view({1, -1, 1, 1}) : y;
  auto parts = backward(g.contiguous().view({B, G, O / G, OH * OW}), y0.contiguous().view({B, G, O / G, OH * OW}),
                        inv_x.view({B, G, OH * OW}), inv_w.view({G, O / G, OH * OW}), p, eps, needs[1]);
  auto grad_norm = parts[1].view(inv_x.sizes()).mul_(inv_x).neg_();
  torch::Tensor grad_x, grad_w, grad_p, grad_q, grad_bias;
  if (needs[3]) grad_q = grad_norm.sum();
  if (needs[2] && p.numel() > 0) grad_p = parts[2];
  if (needs[4] && has_bias) grad_bias = g.sum({0, 2, 3});
  if (needs[0] || needs[1]) {
    auto grads = dot_conv_transpose2d_backward(parts[0].view(y.sizes()), x, w, stride, padding, output_padding, groups,
                                           needs[0], needs[1]);
    grad_x = grads[0];
    if (needs[1]) {
      // inv_w = (conv_transpose2d(ones, w2) + eps)^(-1/2), and w2 sums w^2 over each group's input channels
      auto inv_w3 = inv_w.view({O, OH, OW});
      auto grad_wn2 = parts[3].view({B, O, OH, OW}).sum(0).mul_(inv_w3).mul_(inv_w3).mul_(-0.5);
      auto grad_w2 = tap_norm2_adjoint(grad_wn2, G, x.size(2), x.size(3), KH, KW, stride, padding);
      grad_w = grads[1];
      auto gw5 = grad_w.view({G, Cin / G, -1, KH, KW});
      gw5.addcmul_(w.view(gw5.sizes()), grad_w2.unsqueeze(1), 2.0);
    }
  }
  if (needs[0]) {
    auto grad_x2 = window_sum(grad_norm.mul_(0.5).div_(norm), {KH, KW}, stride, padding);
    auto gx5 = grad_x.view({B, G, -1, x.size(2), x.size(3)});
    gx5.addcmul_(x.view(gx5.sizes()), grad_x2.unsqueeze(2), 2.0);
  }
  return {grad_x, grad_w, grad_p, grad_q, grad_bias};
}
"""

_CPP_DECLS = """
torch::Tensor group_square_sum(torch::Tensor x, int64_t groups);
void forward_(torch::Tensor dot, torch::Tensor inv_x, torch::Tensor inv_w, torch::Tensor p, double eps);
std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor y, torch::Tensor inv_x, torch::Tensor inv_w,
                                    torch::Tensor p, double eps, bool keep_t);
void set_gemm_routes(bool on);
std::vector<torch::Tensor> dot_conv2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w,
                                               std::vector<int64_t> stride, std::vector<int64_t> padding,
                                               int64_t groups, bool need_x, bool need_w);
torch::Tensor dot_conv_transpose2d(torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, std::vector<int64_t> output_padding, int64_t groups);
std::vector<torch::Tensor> dot_conv_transpose2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w,
                                                         std::vector<int64_t> stride, std::vector<int64_t> padding,
                                                         std::vector<int64_t> output_padding, int64_t groups,
                                                         bool need_x, bool need_w);
std::vector<torch::Tensor> scs2d_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor p, torch::Tensor q,
                                         torch::Tensor bias, std::vector<int64_t> stride,
                                         std::vector<int64_t> padding, int64_t groups, double eps);
std::vector<torch::Tensor> scs2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w_hat, torch::Tensor w_scale,
                                          torch::Tensor p, torch::Tensor bias, torch::Tensor y, torch::Tensor inv,
                                          torch::Tensor norm, std::vector<int64_t> stride,
                                          std::vector<int64_t> padding, int64_t groups, double eps,
                                          std::vector<bool> needs);
std::vector<torch::Tensor> scst2d_forward(torch::Tensor x, torch::Tensor w, torch::Tensor p, torch::Tensor q,
                                          torch::Tensor bias, std::vector<int64_t> stride,
                                          std::vector<int64_t> padding, std::vector<int64_t> output_padding,
                                          int64_t groups, double eps);
std::vector<torch::Tensor> scst2d_backward(torch::Tensor g, torch::Tensor x, torch::Tensor w, torch::Tensor w2,
                                           torch::Tensor p, torch::Tensor bias, torch::Tensor y, torch::Tensor inv_x,
                                           torch::Tensor norm, torch::Tensor inv_w, std::vector<int64_t> stride,
                                           std::vector<int64_t> padding, std::vector<int64_t> output_padding,
                                           int64_t groups, double eps, std::vector<bool> needs);
"""

_state: dict[str, Any] = {"module": None, "tried": False}


def _build():
    import logging

    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its import warns about CUDA_HOME on CPU-only machines: irrelevant here
    try:
        from torch.utils.cpp_extension import include_paths, load_inline
    finally:
        logger.setLevel(level)

    capability = torch.backends.cpu.get_cpu_capability()
    # the widest vectors the CPU has: with AVX-512 the exp/log loops call libmvec's 16-wide functions, which
    # run the sharpening 1.6x faster than the 8-wide AVX2 ones on an AVX-512 Xeon (docs/PERFORMANCE.md)
    arch = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"], "AVX2": ["-mavx2", "-mfma"]}
    arch = arch.get(capability, [])
    # -ffast-math lets GCC vectorise expf/logf through glibc's libmvec; it is a compile flag only, so the
    # shared library is not linked with crtfastmath and the process keeps its denormal handling.
    cflags, ldflags = ["-O3", "-ffast-math", "-fopenmp", *arch], ["-fopenmp"]
    name = f"scs_gan_cpu_kernels_v4_{capability.lower()}"
    folder = build_folder(name, [*include_paths(), *cflags, *ldflags])
    folder.mkdir(parents=True, exist_ok=True)
    return load_inline(
        name=name,
        cpp_sources=[_CPP_DECLS, _SOURCE],
        functions=[
            "group_square_sum",
            "forward_",
            "backward",
            "set_gemm_routes",
            "dot_conv2d_backward",
            "dot_conv_transpose2d",
            "dot_conv_transpose2d_backward",
            "scs2d_forward",
            "scs2d_backward",
            "scst2d_forward",
            "scst2d_backward",
        ],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(folder),
        verbose=False,
    )


def _compiler_identity() -> str:
    """The C++ compiler torch's extension builder will use, with its version text."""
    compiler = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{compiler}|{shutil.which(compiler) or ''}|{version}"


def build_folder(name: str, settings: list[str]) -> Path:
    """Where the kernels ``name`` are built: one folder per source, torch version, settings and compiler."""
    key = "\n".join([_SOURCE, _CPP_DECLS, torch.__version__, *settings, _compiler_identity()])
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def get():
    """The compiled kernel module, or None (eager fallback); builds on first call."""
    mode = os.environ.get("SCS_GAN_KERNELS", "auto").lower()
    if mode == "eager":
        return None
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _state["module"] = _build()
        except Exception as error:  # no compiler, no ninja, ...: the eager layers still work
            if mode == "fused":
                raise RuntimeError(f"SCS_GAN_KERNELS=fused, but the CPU kernels could not be built: {error}") from error
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            warnings.warn(
                f"scs_gan: fused CPU kernels unavailable ({first}); using the eager SCS layers (same results, "
                "slower). Install a C++ compiler and ninja to enable them.",
                stacklevel=3,
            )
    return _state["module"]


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can run on ``tensors``: all on the CPU in float32, and the kernels built.

    Double-backward graphs never get here: the autograd functions' ``backward`` switches to the composite
    whenever grad mode is on, before it asks.
    """
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and get() is not None
