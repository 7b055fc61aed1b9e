"""Fused CPU kernels for the element-wise work of the SCS layers (float32), compiled on first use.

On a CPU every element-wise pass over a layer's output is a trip through memory, and the eager layers need
about 25 of them per forward+backward. These three kernels do the same maths in one pass each:

* forward: ``y = sign(c) * (|c| + eps) ** p`` with ``c = dot * inv_x (* inv_w)``, in place on ``dot``;
* the channel-summed squares of the input per group (the patch norms' ingredient), without a temporary;
* backward: from the output ``y`` and the incoming gradient, the gradient of ``dot``, the sum over each
  group's output channels of ``grad_c * c`` (for the norm's gradient), the gradient of ``p``, and optionally
  ``grad_c * c`` itself (the transposed layer sums it over the batch).

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
"""

_CPP_DECLS = """
torch::Tensor group_square_sum(torch::Tensor x, int64_t groups);
void forward_(torch::Tensor dot, torch::Tensor inv_x, torch::Tensor inv_w, torch::Tensor p, double eps);
std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor y, torch::Tensor inv_x, torch::Tensor inv_w,
                                    torch::Tensor p, double eps, bool keep_t);
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
    arch = ["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []
    # -ffast-math lets GCC vectorise expf/logf through glibc's libmvec; it is a compile flag only, so the
    # shared library is not linked with crtfastmath and the process keeps its denormal handling.
    cflags, ldflags = ["-O3", "-ffast-math", "-fopenmp", *arch], ["-fopenmp"]
    name = f"scs_gan_cpu_kernels_v3_{capability.lower()}"
    folder = build_folder(name, [*include_paths(), *cflags, *ldflags])
    folder.mkdir(parents=True, exist_ok=True)
    return load_inline(
        name=name,
        cpp_sources=[_CPP_DECLS, _SOURCE],
        functions=["group_square_sum", "forward_", "backward"],
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
