"""The ``scs-gan`` command: parse and validate arguments, then call into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .errors import UserError


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time SCS layers against nn.Conv2d / nn.ConvTranspose2d of the same shapes",
        description="Forward+backward time and saved-for-backward bytes of SCS layers against the torch layers "
        "of the same shapes, measured side by side (interleaved) in one run, with the ratios and targets.",
    )
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per case, after warm-up (default 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    p.add_argument("--compile", action="store_true", help="torch.compile every layer (torch and SCS alike)")
    p.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT, e.g. 'D 32'")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--no-tune-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (see docs/PERFORMANCE.md)",
    )
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .runtime import tune_cpu_allocator

    if args.batch < 1 or args.repeats < 1:
        raise UserError("--batch and --repeats must be positive")
    tuned = False if args.no_tune_malloc else tune_cpu_allocator()
    print(f"allocator: {'glibc, tuned to keep freed memory' if tuned else 'default'}")
    return bench.main(
        batch=args.batch,
        repeats=args.repeats,
        device=args.device,
        autocast=args.autocast,
        compile_layers=args.compile,
        only=args.only,
        json_path=args.json,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scs-gan`` command, with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scs-gan",
        description="GANs built from sharpened cosine similarity (SCS) layers.",
    )
    parser.add_argument("--version", action="version", version=f"scs-gan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scs-gan`` and ``python -m scs_gan``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
