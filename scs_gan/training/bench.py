"""Training-step benchmark: images/s of a full step (D and G phases) for networks of one topology whose
layers are SCS, cosine or convolutions, measured side by side (interleaved steps) in one process."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from .config import load_config
from .trainer import Trainer

KINDS = ("scs", "cosine", "conv")


def run(overrides: list[str] | None = None, steps: int = 30, warmup: int = 3) -> list[str]:
    """Measure and return the result lines (overrides apply to all three configs, e.g. train.batch=128)."""
    overrides = overrides or []
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for kind in KINDS:
            config = load_config(
                None,
                [
                    f"model.g.kind={kind}",
                    f"model.d.kind={kind}",
                    f"train.runs_dir={tmp}",
                    "train.progress=false",
                    *overrides,
                ],
            )
            trainers[kind] = Trainer(config)
            trainers[kind].log.stream = None  # quiet
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        try:
            for trainer in trainers.values():
                for _ in range(warmup):
                    trainer.step()
            for _ in range(steps):
                for kind, trainer in trainers.items():
                    start = time.perf_counter()
                    trainer.step()
                    if trainer.accelerator.device.type == "cuda":
                        torch.cuda.synchronize()
                    times[kind].append(time.perf_counter() - start)
        finally:
            for trainer in trainers.values():
                trainer.close()
    batch = trainers["scs"].config.train.batch
    device = trainers["scs"].accelerator.device
    rate = {kind: batch / statistics.median(t) for kind, t in times.items()}
    lines = [
        f"training-step benchmark: batch {batch}, {steps} interleaved steps after {warmup} warm-up, {device}, "
        f"{torch.get_num_threads()} threads, default topology ({' '.join(overrides) or 'no overrides'})",
    ]
    for kind in KINDS:
        ms = 1e3 * statistics.median(times[kind])
        ratio = rate["conv"] / rate[kind]
        lines.append(f"{kind:<7} {ms:8.1f} ms/step {rate[kind]:9.1f} images/s   {ratio:.2f}x DCGAN time")
    lines.append(f"SCS-GAN step / DCGAN step: {rate['conv'] / rate['scs']:.2f} (target <= 1.20, goal 1.10)")
    return lines
