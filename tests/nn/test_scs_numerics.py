"""Numerical safety: zeros, mixed precision, torch.compile, copies, dtype moves and DDP."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from scs_gan.nn import SCS2d, SCSTranspose2d

LAYERS = {
    "scs2d": lambda **kw: SCS2d(3, 8, 4, stride=2, padding=1, **kw),
    "scst2d": lambda **kw: SCSTranspose2d(3, 8, 4, stride=2, padding=1, **kw),
}


def _finite_grads(layer, x, create_graph=False):
    x = x.clone().requires_grad_()
    y = layer(x)
    assert torch.isfinite(y).all()
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], create_graph=create_graph)
    for g in grads:
        assert torch.isfinite(g).all()
    return x, grads


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("p_floor,p_init", [(1.0, 1.5), (0.5, 0.8), (0.0, 0.3)])
def test_all_zero_input_gives_finite_outputs_and_gradients(name, p_floor, p_init):
    layer = LAYERS[name](p_floor=p_floor, p_init=p_init)
    x, _grads = _finite_grads(layer, torch.zeros(2, 3, 8, 8))
    assert torch.equal(layer(torch.zeros(2, 3, 8, 8)), torch.zeros_like(layer(x)))
    # double backward (R1 penalty) stays finite too
    x = torch.zeros(2, 3, 8, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    penalty = gx.square().sum()
    penalty.backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("name", LAYERS)
def test_all_zero_filter_and_zero_padded_borders(name):
    layer = LAYERS[name]()
    with torch.no_grad():
        layer.weight[0].zero_()  # one dead filter (transposed: one input channel's taps)
    x = torch.zeros(2, 3, 8, 8)
    x[:, :, 2:6, 2:6] = torch.randn(2, 3, 4, 4)  # zero border, zero-padded patches at the edges
    _finite_grads(layer, x)
    _finite_grads(layer, x, create_graph=True)


@pytest.mark.parametrize("name", LAYERS)
def test_exact_zero_cosine_uses_one_sided_derivative_on_both_paths(name):
    """At c == 0 the eager backward and the double-backward (composite) path agree."""
    layer = LAYERS[name](p_init=1.2).double()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    (g_fast,) = torch.autograd.grad(layer(x).sum(), x)
    (g_graph,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    torch.testing.assert_close(g_fast, g_graph.detach(), rtol=1e-10, atol=1e-14)
    assert g_fast.abs().sum() > 0  # p * eps**(p-1), not a dead zero


@pytest.mark.parametrize("name", LAYERS)
def test_p_and_q_stay_in_range_for_any_raw_value(name):
    layer = LAYERS[name](p_floor=0.75, p_init=1.5)
    with torch.no_grad():
        layer.p_raw.copy_(torch.linspace(-200, 200, 8))
        layer.q_raw.fill_(-200.0)
    assert (layer.p >= 0.75).all() and layer.p.shape == (8,)
    assert layer.q >= 0
    _finite_grads(layer, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("name", LAYERS)
def test_bfloat16_autocast_on_cpu_is_finite_and_close_to_float32(name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = torch.randn(4, 3, 8, 8)
    y32 = layer(x)
    g32 = torch.autograd.grad(y32.square().sum(), list(layer.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = layer(x)
        assert y16.dtype == torch.float32  # norms, power and output in float32
    g16 = torch.autograd.grad(y16.square().sum(), list(layer.parameters()))
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16, y32, rtol=0.05, atol=0.03)
    for a, b in zip(g16, g32, strict=True):
        assert torch.isfinite(a).all()
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_is_finite_and_close_to_float32(name, dtype):
    torch.manual_seed(0)
    layer = LAYERS[name]().cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda") * 100  # large values: sums of squares overflow fp16
    y32 = layer(x)
    g32 = torch.autograd.grad(y32.square().sum(), list(layer.parameters()))
    with torch.autocast("cuda", dtype=dtype):
        y16 = layer(x)
    g16 = torch.autograd.grad(y16.square().sum(), list(layer.parameters()))
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16, y32, rtol=0.05, atol=0.03)
    for a, b in zip(g16, g32, strict=True):
        assert torch.isfinite(a).all()
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-4


@pytest.mark.parametrize("name", LAYERS)
def test_torch_compile_matches_eager(name):
    torch.manual_seed(0)
    layer = LAYERS[name](bias=True)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    compiled = torch.compile(layer, fullgraph=True)
    yc = compiled(x)
    grads_c = torch.autograd.grad(yc.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads, strict=True):  # the compiler reorders float32 sums
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_deepcopy_state_dict_and_dtype_moves(name):
    torch.manual_seed(0)
    layer = LAYERS[name](bias=True)
    with torch.no_grad():
        layer.p_raw.normal_()
        layer.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    y = layer(x)
    torch.testing.assert_close(copy.deepcopy(layer)(x), y, rtol=0, atol=0)
    fresh = LAYERS[name](bias=True)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    assert set(layer.state_dict()) == {"weight", "p_raw", "q_raw", "bias"}
    wide = copy.deepcopy(layer).to(torch.float64)
    y64 = wide(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, name: str, result: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        layer = LAYERS[name]()
        ddp = torch.nn.parallel.DistributedDataParallel(layer)
        x = torch.randn(world, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))[rank]
        ddp(x).square().mean().backward()
        result[rank] = [p.grad.clone() for p in layer.parameters()]
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("name", LAYERS)
def test_ddp_averages_gradients_like_one_process(name):
    world = 2
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_ddp_worker, args=(world, _free_port(), name, result), nprocs=world, join=True)
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = torch.randn(world, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = sum(layer(x[r]).square().mean() for r in range(world)) / world
    expected = torch.autograd.grad(loss, list(layer.parameters()))
    for rank in range(world):
        for got, want in zip(result[rank], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
