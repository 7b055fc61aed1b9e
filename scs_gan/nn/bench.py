"""Layer benchmark: SCS layers against the torch layers of the same shape, measured side by side.

Every case times forward + backward of three layers on the same input - the torch layer (``nn.Conv2d`` or
``nn.ConvTranspose2d``), the SCS layer with sharpening and the SCS layer without it - interleaving the three
round by round so that a noisy, shared machine slows them alike, and reports medians and their ratios. It
also counts the bytes each layer saves for backward (distinct storages, through ``saved_tensors_hooks``).

Run it as ``scs-gan bench`` (``--help`` lists the options). Nothing here asserts a speed: the targets are
printed beside the measured ratios.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from . import _kernels
from .modules import SCS2d, SCSTranspose2d

try:
    import resource
except ImportError:  # Windows has no getrusage
    resource = None  # type: ignore[assignment]


@dataclass(frozen=True)
class LayerCase:
    """One benchmarked shape: a discriminator layer (conv) or a generator layer (transposed)."""

    name: str
    transposed: bool
    in_channels: int
    out_channels: int
    size: int
    kernel: int
    stride: int
    padding: int
    input_grad: bool = True

    def layers(self, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
        args = (self.in_channels, self.out_channels, self.kernel, self.stride, self.padding)
        if self.transposed:
            torch_layer: nn.Module = nn.ConvTranspose2d(*args, bias=False)
            scs, cos = SCSTranspose2d(*args), SCSTranspose2d(*args, sharpen=False)
        else:
            torch_layer, scs, cos = nn.Conv2d(*args, bias=False), SCS2d(*args), SCS2d(*args, sharpen=False)
        return torch_layer.to(device), scs.to(device), cos.to(device)


# The shapes of a 32x32 DCGAN-style discriminator and generator (batch 64). The first discriminator layer
# also needs its input gradient in a GAN (the generator step backpropagates through it); the generator's
# first layer takes the latent code, which needs none.
CASES: tuple[LayerCase, ...] = (
    LayerCase("D 1->32 @32 k4s2", False, 1, 32, 32, 4, 2, 1),
    LayerCase("D 32->64 @32 k4s2", False, 32, 64, 32, 4, 2, 1),
    LayerCase("D 64->128 @16 k3s1", False, 64, 128, 16, 3, 1, 1),
    LayerCase("D 128->256 @8 k4s2", False, 128, 256, 8, 4, 2, 1),
    LayerCase("G 128->256 @1 k4s1", True, 128, 256, 1, 4, 1, 0, input_grad=False),
    LayerCase("G 256->128 @4 k4s2", True, 256, 128, 4, 4, 2, 1),
    LayerCase("G 128->64 @8 k4s2", True, 128, 64, 8, 4, 2, 1),
    LayerCase("G 64->1 @16 k4s2", True, 64, 1, 16, 4, 2, 1),
)

TARGETS = {
    "median time ratio, >= 32 input channels": 1.25,
    "time ratio, first layer": 2.0,
    "median saved-bytes ratio": 2.5,
    "median sharpen on / off": 1.10,
}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages that autograd keeps for backward while ``fn`` runs its forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def _step(layer: nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            y = layer(x)
        y.backward(torch.ones_like(y))

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class CaseResult:
    """Medians (milliseconds) and ratios for one case."""

    name: str
    torch_ms: float
    scs_ms: float
    cosine_ms: float
    torch_saved_mb: float
    scs_saved_mb: float
    torch_faults: float
    scs_faults: float

    @property
    def time_ratio(self) -> float:
        return self.scs_ms / self.torch_ms

    @property
    def sharpen_ratio(self) -> float:
        return self.scs_ms / self.cosine_ms

    @property
    def saved_ratio(self) -> float:
        return self.scs_saved_mb / self.torch_saved_mb


def run_case(
    case: LayerCase,
    batch: int,
    repeats: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
    compile_layers: bool = False,
) -> CaseResult:
    """Measure one case: ``repeats`` interleaved rounds after warm-up; medians of each layer's times."""
    torch.manual_seed(0)
    layers = case.layers(device)
    if compile_layers:
        # A fresh compiler cache per case: the cases' layers share their classes' forward code, and dynamo's
        # limit of recompilations per code object (8) would otherwise send the later cases back to eager.
        torch._dynamo.reset()
        layers = tuple(torch.compile(layer) for layer in layers)  # type: ignore[assignment]
    x = torch.randn(batch, case.in_channels, case.size, case.size, device=device, requires_grad=case.input_grad)
    steps = [_step(layer, x, autocast) for layer in layers]
    saved = [saved_bytes(lambda layer=layer: layer(x)) for layer in layers[:2]]
    for step in steps:  # warm-up (and compilation)
        for _ in range(3):
            step()
    times: list[list[float]] = [[], [], []]
    faults = [0, 0, 0]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            _sync(device)
            before = _minor_faults()
            start = time.perf_counter()
            step()
            _sync(device)
            times[i].append(time.perf_counter() - start)
            faults[i] += _minor_faults() - before
    torch_ms, scs_ms, cos_ms = (1e3 * statistics.median(t) for t in times)
    return CaseResult(
        case.name,
        torch_ms,
        scs_ms,
        cos_ms,
        saved[0] / 2**20,
        saved[1] / 2**20,
        faults[0] / repeats,
        faults[1] / repeats,
    )


def _minor_faults() -> int:
    """Page faults of this process so far (fresh memory pages touched); 0 where unavailable."""
    return 0 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def summarize(results: list[CaseResult]) -> dict[str, float]:
    """The figures the targets are stated in."""
    by_name = {r.name: r for r in results}
    wide = [r.time_ratio for r in results if _in_channels(r.name) >= 32]
    summary = {
        "median time ratio, >= 32 input channels": statistics.median(wide) if wide else float("nan"),
        "time ratio, first layer": by_name[CASES[0].name].time_ratio if CASES[0].name in by_name else float("nan"),
        "median saved-bytes ratio": statistics.median(r.saved_ratio for r in results),
        "median sharpen on / off": statistics.median(r.sharpen_ratio for r in results),
    }
    return summary


def _in_channels(name: str) -> int:
    return int(name.split()[1].split("->")[0])


def format_table(results: list[CaseResult], summary: dict[str, float], header: str) -> str:
    """A plain-text table (and summary against the targets) for the terminal and the docs."""
    lines = [
        header,
        "",
        f"{'layer':<22}{'torch ms':>10}{'SCS ms':>10}{'cos ms':>10}{'SCS/torch':>11}{'on/off':>8}"
        f"{'saved MiB t/SCS':>18}{'saved ratio':>13}{'faults/step t/SCS':>19}",
    ]
    for r in results:
        lines.append(
            f"{r.name:<22}{r.torch_ms:>10.2f}{r.scs_ms:>10.2f}{r.cosine_ms:>10.2f}{r.time_ratio:>11.2f}"
            f"{r.sharpen_ratio:>8.2f}{f'{r.torch_saved_mb:.1f}/{r.scs_saved_mb:.1f}':>18}{r.saved_ratio:>13.2f}"
            f"{f'{r.torch_faults:.0f}/{r.scs_faults:.0f}':>19}"
        )
    lines.append("")
    for key, value in summary.items():
        target = TARGETS[key]
        if math.isnan(value):
            lines.append(f"{key:<42}{'-':>6}   target <= {target:.2f}  (not measured in this run)")
            continue
        verdict = "meets" if value <= target else "misses"
        lines.append(f"{key:<42}{value:>6.2f}   target <= {target:.2f}  ({verdict})")
    return "\n".join(lines)


def _route_calls(case: LayerCase, batch: int) -> list[tuple[str, Callable[[], object]]]:
    """The convolution calls of ``case``'s SCS layer that the fused kernels' GEMM routes may take."""
    module = _kernels.get()
    gen = torch.Generator().manual_seed(0)
    k, st, pad = case.kernel, [case.stride] * 2, [case.padding] * 2
    x = torch.randn(batch, case.in_channels, case.size, case.size, generator=gen)
    if case.transposed:
        w = torch.randn(case.in_channels, case.out_channels, k, k, generator=gen)
        y = module.dot_conv_transpose2d(x, w, st, pad, [0, 0], 1)
        g = torch.randn(y.shape, generator=gen)
        return [
            ("forward", lambda: module.dot_conv_transpose2d(x, w, st, pad, [0, 0], 1)),
            (
                "backward",
                lambda: module.dot_conv_transpose2d_backward(g, x, w, st, pad, [0, 0], 1, case.input_grad, True),
            ),
        ]
    w = torch.randn(case.out_channels, case.in_channels, k, k, generator=gen)
    g = torch.randn(torch.nn.functional.conv2d(x, w, None, case.stride, case.padding).shape, generator=gen)
    return [("backward", lambda: module.dot_conv2d_backward(g, x, w, st, pad, 1, case.input_grad, True))]


def route_lines(cases: list[LayerCase], batch: int, repeats: int) -> list[str]:
    """ATen's convolutions against the GEMM routes the fused CPU kernels take for the shapes that have one
    (one input channel; a transposed layer with one output channel or on a 1x1 input), interleaved."""
    module = _kernels.get()
    routed = [c for c in cases if c.in_channels == 1 or (c.transposed and (c.out_channels == 1 or c.size == 1))]
    if module is None or not routed:
        return []
    lines = [
        "",
        f"convolutions inside the SCS layers (batch {batch}, {repeats} interleaved rounds): ATen vs GEMM route",
    ]
    calls = [(case, what, call) for case in routed for what, call in _route_calls(case, batch)]
    for case, what, call in tqdm(calls, desc="timing the GEMM routes against ATen", unit="call", file=sys.stderr):
        times: dict[bool, list[float]] = {False: [], True: []}
        try:
            for rnd in range(repeats + 3):
                for gemm in (False, True):
                    module.set_gemm_routes(gemm)
                    start = time.perf_counter()
                    call()
                    if rnd >= 3:  # warm-up rounds are not timed
                        times[gemm].append(time.perf_counter() - start)
        finally:
            module.set_gemm_routes(True)
        aten, gemm = (1e3 * statistics.median(times[flag]) for flag in (False, True))
        lines.append(f"  {case.name:<22}{what:<10}ATen {aten:7.2f} ms   GEMM {gemm:7.2f} ms   {aten / gemm:5.1f}x")
    return lines


def main(
    batch: int = 64,
    repeats: int = 20,
    device: str = "cpu",
    autocast: str = "none",
    compile_layers: bool = False,
    only: str | None = None,
    json_path: str | None = None,
) -> int:
    """Run the benchmark and print its table; returns a process exit code."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device name; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device} was asked for, but no such CUDA device is available")
    autocast_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
    cases = [c for c in CASES if only is None or only.lower() in c.name.lower()]
    if not cases:
        raise UserError(f"no benchmark case matches {only!r}; the cases are: {', '.join(c.name for c in CASES)}")
    results = []
    with tqdm(cases, desc="timing SCS layers against torch layers", unit="layer", file=sys.stderr) as bar:
        for case in bar:
            bar.set_postfix_str(case.name)
            results.append(run_case(case, batch, repeats, dev, autocast_dtype, compile_layers))
    summary = summarize(results)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    header = (
        f"SCS layer benchmark: forward+backward, batch {batch}, {repeats} interleaved rounds, {device_name}, "
        f"torch {torch.__version__}, autocast {autocast}, {'torch.compile' if compile_layers else 'eager'}"
    )
    print(format_table(results, summary, header))
    if dev.type == "cpu" and autocast_dtype is None and not compile_layers:
        print("\n".join(route_lines(cases, batch, repeats)), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"header": header, "results": [asdict(r) for r in results], "summary": summary}, f, indent=2)
    return 0
