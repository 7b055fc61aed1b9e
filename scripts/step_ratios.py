"""Time full training steps of several configurations side by side, as ratios to the first one.

    python scripts/step_ratios.py --steps 25 \
        --case default \
        --case share train.share_fakes=true \
        --case g64 model.g.channels=64

Each ``--case`` is a name followed by dotted overrides of the default configuration. Every case gets its own
trainer (metrics off, no progress bar); after 3 warm-up steps each, the cases take one step in turn, so a change
in the host's load falls on all of them alike. It prints the median step time of each case and its ratio to
the first case. ``scs-gan bench train`` does the same for the three layer kinds (with the same timing loop).

``--aten-convs NAME`` runs case NAME with every SCS layer's convolutions on ATen's own routines (oneDNN),
without the GEMM routes the fused CPU kernels take for one-channel and 1x1-input layers, e.g.

    python scripts/step_ratios.py --case default --case aten --aten-convs aten
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial

import torch

from scs_gan.errors import UserError
from scs_gan.nn import _kernels
from scs_gan.training.bench import interleaved_step_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", action="append", required=True, metavar=("NAME", "OVERRIDE"))
    parser.add_argument("--steps", type=int, default=25, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case first")
    parser.add_argument(
        "--aten-convs",
        action="append",
        default=[],
        metavar="NAME",
        help="run case NAME without the fused kernels' GEMM convolution routes",
    )
    args = parser.parse_args()
    cases = {name: overrides for name, *overrides in args.case}
    unknown = sorted(set(args.aten_convs) - set(cases))
    if unknown:
        parser.error(f"--aten-convs names no --case: {', '.join(unknown)}")
    before_step = {}
    if args.aten_convs:
        module = _kernels.get()
        if module is None:
            parser.error("--aten-convs needs the fused CPU kernels, which are not available here")
        before_step = {name: partial(module.set_gemm_routes, name not in args.aten_convs) for name in cases}
    warmups = {name: max(args.warmup - 1, 0) for name in cases}  # the first step is untimed too
    times = interleaved_step_times(cases, args.steps, warmups, before_step).times
    print(f"{args.steps} interleaved steps per case after {args.warmup} warm-up, {torch.get_num_threads()} threads")
    first = statistics.median(next(iter(times.values())))
    for name, overrides in cases.items():
        median = statistics.median(times[name])
        print(f"{name:16s} {1e3 * median:7.1f} ms/step  {median / first:5.2f}x  {' '.join(overrides) or '(defaults)'}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
