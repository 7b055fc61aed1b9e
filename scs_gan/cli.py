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
    p.add_argument(
        "what",
        nargs="?",
        choices=["layers", "data"],
        default="layers",
        help="layers: SCS against torch layers (default); data: images/s of the data pipeline alone",
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
    if args.what == "data":
        from .data import bench as data_bench

        for line in data_bench.run(batch=args.batch):
            print(line, flush=True)
        return 0
    return bench.main(
        batch=args.batch,
        repeats=args.repeats,
        device=args.device,
        autocast=args.autocast,
        compile_layers=args.compile,
        only=args.only,
        json_path=args.json,
    )


def _add_data(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="load a dataset and print its summary (name, count, resolution, channels, fingerprint)",
        description="Load a dataset as training would and print its summary. Options are dotted overrides of "
        "the data section, e.g.: scs-gan data data.name=folder data.path=~/faces data.resolution=64 "
        "data.channels=3",
    )
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE", help="data options")
    p.set_defaults(func=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from .config import apply_overrides
    from .data import DataConfig, build_dataset

    config = apply_overrides(DataConfig(), args.overrides, prefix="data")
    dataset = build_dataset(config)
    print(dataset.summary_line())
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a GAN (default: the SCS-GAN on the embedded mnist5k digits)",
        description="Train a GAN. Options come from the defaults, then --config, then dotted overrides such as "
        "train.batch=128 model.g.channels=32. Multi-GPU: accelerate launch --multi_gpu --num_processes N "
        "-m scs_gan train ...",
    )
    p.add_argument("--config", metavar="YAML", help="a run configuration (see configs/)")
    p.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue a run: 'latest', a run directory or a checkpoint; restores everything, bit for bit",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .runtime import tune_cpu_allocator
    from .training.config import load_config

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        from .config import dump_yaml

        print(dump_yaml(config), end="")
        return 0
    tune_cpu_allocator()
    from .training.loop import TrainingStopped, train

    try:
        train(config, resume=args.resume)
    except TrainingStopped as stopped:
        print(f"scs-gan: {stopped}", file=sys.stderr)
        return stopped.exit_code
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scs-gan`` command, with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scs-gan",
        description="GANs built from sharpened cosine similarity (SCS) layers.",
    )
    parser.add_argument("--version", action="version", version=f"scs-gan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(subparsers)
    _add_bench(subparsers)
    _add_data(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scs-gan`` and ``python -m scs_gan``; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # section.key=value overrides may come before or after options such as --resume
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
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
