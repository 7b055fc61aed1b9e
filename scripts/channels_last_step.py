"""Time training steps with G and D in channels_last memory format against the usual NCHW, side by side.

    python scripts/channels_last_step.py --steps 25 model.g.kind=conv model.d.kind=conv

Two trainers of the same configuration (the default plus the given dotted overrides; metrics and the progress
bar off) take steps in turn after 3 warm-up steps each; the second has G, D and the EMA generator converted to
channels_last, and the images D sees made channels_last too. It prints both median step times and their ratio.
oneDNN runs its NHWC convolutions on channels_last tensors without reordering them on every call; the fused
SCS kernels, which work on NCHW, turn such inputs back into NCHW, so for the SCS arms this measures the cost of
the conversions rather than a benefit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from tqdm.auto import tqdm

from scs_gan.errors import UserError
from scs_gan.training.config import load_config
from scs_gan.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the default configuration")
    parser.add_argument("--steps", type=int, default=25, help="timed steps per trainer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        quiet = [f"train.runs_dir={tmp}", "train.progress=false", "metrics.names=[]", *args.overrides]
        trainers = {"nchw": Trainer(load_config(None, quiet)), "channels_last": Trainer(load_config(None, quiet))}
        try:
            last = trainers["channels_last"]
            for module in (last.G, last.D, last.G_ema):
                module.to(memory_format=torch.channels_last)
            augment = last._augment
            last._augment = lambda images: augment(images).contiguous(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {name: [] for name in trainers}
            with tqdm(
                total=2 * (3 + args.steps), desc="timing NCHW and channels_last steps side by side", unit="step"
            ) as bar:
                for trainer in trainers.values():
                    trainer.log.stream = None
                    for _ in range(3):
                        trainer.step()
                        bar.update()
                for _ in range(args.steps):
                    for name, trainer in trainers.items():
                        start = time.perf_counter()
                        trainer.step()
                        times[name].append(time.perf_counter() - start)
                        bar.update()
        finally:
            for trainer in trainers.values():
                trainer.close()
    base = statistics.median(times["nchw"])
    print(
        f"{args.steps} interleaved steps each after 3 warm-up, {torch.get_num_threads()} threads, "
        f"{' '.join(args.overrides) or 'default configuration'}"
    )
    for name, t in times.items():
        print(f"{name:14s} {1e3 * statistics.median(t):7.1f} ms/step  {statistics.median(t) / base:5.2f}x")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
