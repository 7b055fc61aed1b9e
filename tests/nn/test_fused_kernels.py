"""The fused CPU kernels compute what the eager layers compute (float32), and change nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from scs_gan.nn import SCS2d, SCSTranspose2d, _kernels


@pytest.fixture
def kernel_mode(monkeypatch):
    def set_mode(mode: str) -> None:
        monkeypatch.setenv("SCS_GAN_KERNELS", mode)
        monkeypatch.setitem(_kernels._state, "tried", False)
        monkeypatch.setitem(_kernels._state, "module", None)

    return set_mode


def _forward_backward(layer, x):
    x = x.clone().requires_grad_()
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    return y.detach(), torch.autograd.grad(y, [x, *layer.parameters()], g)


LAYERS = [
    lambda **kw: SCS2d(4, 6, 3, 2, 1, 1, 2, **kw),
    lambda **kw: SCS2d(3, 8, 3, 1, 1, **kw),
    lambda **kw: SCS2d(1, 4, 4, 2, 1, **kw),
    lambda **kw: SCS2d(3, 4, 3, 1, 2, 2, **kw),  # dilated: the per-op path with the fused kernels
    lambda **kw: SCSTranspose2d(4, 6, 4, 2, 1, 0, 2, **kw),
    lambda **kw: SCSTranspose2d(3, 8, 3, 1, 0, **kw),
    lambda **kw: SCSTranspose2d(4, 4, 4, 2, 1, 1, **kw),  # output_padding
    lambda **kw: SCSTranspose2d(3, 4, 3, 1, 0, dilation=2, **kw),  # dilated: the per-op path
]
# The networks' layer shapes (k4 s2 p1, k4 s1 p0) run as one C++ call per direction ("Layer" functions).
WHOLE_LAYER = [
    (SCS2d(1, 8, 4, 2, 1), torch.randn(3, 1, 16, 16), "_SCS2dLayerFunctionBackward"),
    (SCS2d(8, 1, 4, 1, 0), torch.randn(3, 8, 4, 4), "_SCS2dLayerFunctionBackward"),
    (SCSTranspose2d(16, 8, 4, 1, 0), torch.randn(3, 16, 1, 1), "_SCSTranspose2dLayerFunctionBackward"),
    (SCSTranspose2d(8, 1, 4, 2, 1), torch.randn(3, 8, 8, 8), "_SCSTranspose2dLayerFunctionBackward"),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("sharpen,bias", [(True, False), (False, False), (True, True), (False, True)])
def test_fused_kernels_match_the_eager_layers(kernel_mode, make, sharpen, bias):
    kernel_mode("fused")
    torch.manual_seed(0)
    layer = make(sharpen=sharpen, bias=bias)
    with torch.no_grad():
        if sharpen:
            layer.p_raw.uniform_(-1.0, 1.5)
        if bias:
            layer.bias.normal_()
    x = torch.randn(5, layer.in_channels, 9, 9)
    assert _kernels.usable(x)
    y_fused, g_fused = _forward_backward(layer, x)
    kernel_mode("eager")
    assert not _kernels.usable(x)
    y_eager, g_eager = _forward_backward(layer, x)
    torch.testing.assert_close(y_fused, y_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fused, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item() + 1e-7)


@pytest.mark.parametrize("layer,x,function", WHOLE_LAYER)
def test_network_layers_run_as_one_call_per_direction_and_match_eager(kernel_mode, layer, x, function):
    kernel_mode("fused")
    y = layer(x.requires_grad_())
    assert type(y.grad_fn).__name__ == function
    y_fused, g_fused = _forward_backward(layer, x)
    kernel_mode("eager")
    y_eager, g_eager = _forward_backward(layer, x)
    assert type(layer(x).grad_fn).__name__ != function
    torch.testing.assert_close(y_fused, y_eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_fused, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item() + 1e-7)


def _r1_grads(layer, x):
    """The gradient of an R1-like penalty (squared input gradient) with respect to the layer's parameters."""
    x = x.clone().requires_grad_()
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    return torch.autograd.grad(grad_x.square().sum(), list(layer.parameters()))


@pytest.mark.parametrize("layer,x,function", WHOLE_LAYER)
def test_network_layers_differentiate_twice_like_eager(kernel_mode, layer, x, function):
    """R1 penalties differentiate D twice: the one-call layers recompute through the composite as the others do."""
    kernel_mode("fused")
    fused = _r1_grads(layer, x)
    kernel_mode("eager")
    for a, b in zip(fused, _r1_grads(layer, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item() + 1e-7)


def test_fused_kernels_on_zero_inputs_and_float64_falls_back(kernel_mode):
    kernel_mode("fused")
    layer = SCS2d(3, 4, 3, padding=1)
    _, grads = _forward_backward(layer, torch.zeros(2, 3, 6, 6))
    assert all(torch.isfinite(g).all() for g in grads)
    assert not _kernels.usable(torch.zeros(1, dtype=torch.float64))


def test_loading_the_kernels_keeps_denormals(kernel_mode):
    """-ffast-math is a compile flag only: the process must not start flushing denormals to zero."""
    kernel_mode("fused")
    assert _kernels.get() is not None
    tiny = torch.tensor(1e-40)
    assert (tiny * 1.0).item() != 0.0


def test_the_build_folder_is_keyed_by_what_changes_the_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    base = _kernels.build_folder("k", ["/env-a/torch/include", "-O3"])
    assert base.parent == tmp_path and base == _kernels.build_folder("k", ["/env-a/torch/include", "-O3"])
    others = {
        _kernels.build_folder("k", ["/env-b/torch/include", "-O3"]),  # another environment's torch
        _kernels.build_folder("k", ["/env-a/torch/include", "-O2"]),  # other flags
        _kernels.build_folder("j", ["/env-a/torch/include", "-O3"]),  # another kernel set
    }
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    others.add(_kernels.build_folder("k", ["/env-a/torch/include", "-O3"]))  # another torch version
    monkeypatch.undo()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "clang++-that-does-not-exist")
    others.add(_kernels.build_folder("k", ["/env-a/torch/include", "-O3"]))  # another compiler
    assert len(others) == 5 and base not in others


def test_a_second_process_loads_the_built_kernels_without_rebuilding():
    import subprocess
    import sys

    if _kernels.get() is None:
        pytest.skip("no C++ compiler here: the kernels are not built")
    libraries = list(Path(_kernels.get().__file__).parent.glob("*.so"))
    before = {p: p.stat().st_mtime_ns for p in libraries}
    code = "from scs_gan.nn import _kernels; assert _kernels.get() is not None; print(_kernels.get().__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert Path(out.stdout.strip().splitlines()[-1]) in libraries
    assert {p: p.stat().st_mtime_ns for p in libraries} == before


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm to read the kernels' symbols")
def test_the_sharpening_loops_are_vectorised():
    """The fused kernels are built for the widest vectors the CPU has; their exp/log loops then call glibc's
    vector maths: libmvec's 16-wide _ZGVeN16v_expf/logf with AVX-512, the 8-wide _ZGVdN8v_expf/logf with
    AVX2. A loop the compiler left scalar would import only expf/logf."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        pytest.skip("the CPU has no AVX2")
    module = _kernels.get()
    if module is None:
        pytest.skip("the fused kernels could not be built here (no compiler)")
    symbols = subprocess.run(["nm", "-D", module.__file__], capture_output=True, text=True, check=True).stdout
    prefix = "_ZGVeN16v_" if capability == "AVX512" else "_ZGVdN8v_"
    assert f"{prefix}expf" in symbols and f"{prefix}logf" in symbols


# (transposed, x shape, weight shape, stride, padding, output_padding, groups): the shapes the GEMM routes take
# (one input channel, one output channel of a transposed layer, a transposed layer on a 1x1 input) and shapes
# next to them that must keep calling ATen (grouped, three channels, padded 1x1 input)
CONV_ROUTES = [
    (False, (3, 1, 16, 16), (8, 1, 4, 4), 2, 1, 0, 1),
    (False, (2, 1, 9, 7), (5, 1, 3, 3), 1, 1, 0, 1),
    (False, (2, 1, 11, 11), (4, 1, 4, 4), 3, 0, 0, 1),
    (False, (3, 2, 8, 8), (4, 1, 4, 4), 2, 1, 0, 2),
    (False, (3, 3, 8, 8), (4, 3, 4, 4), 2, 1, 0, 1),
    (True, (3, 8, 8, 8), (8, 1, 4, 4), 2, 1, 0, 1),
    (True, (2, 6, 7, 5), (6, 1, 4, 4), 2, 1, 1, 1),
    (True, (2, 4, 5, 5), (4, 1, 3, 3), 1, 0, 0, 1),
    (True, (3, 16, 1, 1), (16, 8, 4, 4), 1, 0, 0, 1),
    (True, (3, 16, 1, 1), (16, 8, 4, 4), 2, 0, 0, 1),
    (True, (3, 1, 1, 1), (1, 8, 4, 4), 1, 0, 0, 1),
    (True, (3, 16, 1, 1), (16, 8, 4, 4), 1, 1, 0, 1),
    (True, (3, 4, 6, 6), (4, 1, 4, 4), 2, 1, 0, 2),
    (True, (3, 8, 4, 4), (8, 3, 4, 4), 2, 1, 0, 1),
]


@pytest.mark.parametrize("transposed,x_shape,w_shape,stride,padding,output_padding,groups", CONV_ROUTES)
def test_the_layers_convolutions_match_aten_on_every_route(
    kernel_mode, transposed, x_shape, w_shape, stride, padding, output_padding, groups
):
    """The convolutions inside the one-call layers (a GEMM route on the shapes where oneDNN is slow) give
    ATen's results and gradients, for each subset of gradients asked for."""
    kernel_mode("fused")
    module = _kernels.get()
    if module is None:
        pytest.skip("the fused kernels could not be built here (no compiler)")
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(x_shape, generator=gen), torch.randn(w_shape, generator=gen)
    st, pad, opad = [stride] * 2, [padding] * 2, [output_padding] * 2
    if transposed:
        y_ref = torch.nn.functional.conv_transpose2d(x, w, None, stride, padding, output_padding, groups)
        y = module.dot_conv_transpose2d(x, w, st, pad, opad, groups)
    else:
        y_ref = torch.nn.functional.conv2d(x, w, None, stride, padding, 1, groups)
        y = None  # the forward convolution stays ATen's
    if y is not None:
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y_ref.shape, generator=gen)
    for need_x, need_w in [(True, True), (True, False), (False, True)]:
        ref = torch.ops.aten.convolution_backward(
            g, x, w, None, st, pad, [1, 1], transposed, opad if transposed else [0, 0], groups, [need_x, need_w, False]
        )[:2]
        if transposed:
            got = module.dot_conv_transpose2d_backward(g, x, w, st, pad, opad, groups, need_x, need_w)
        else:
            got = module.dot_conv2d_backward(g, x, w, st, pad, groups, need_x, need_w)
        for a, b, needed in zip(got, ref, (need_x, need_w), strict=True):
            if needed:
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
            else:
                assert a is None
