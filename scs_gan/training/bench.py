"""Training-step benchmark: images/s of a full step (D and G phases) for networks of one topology whose
layers are SCS, cosine or convolutions, measured side by side (interleaved steps) in one process; with
``compile``, each kind also runs with ``train.compile`` in the same loop."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from .config import load_config
from .trainer import Trainer

KINDS = ("scs", "cosine", "conv")
COMPILED = "+compile"  # the suffix of a compiled case's name, e.g. scs+compile
COMPILE_WARMUP = 2  # extra warm-up steps of a compiled case after its first (compiling) step


def _timed_step(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.step()
    if trainer.accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(overrides: list[str] | None = None, steps: int = 30, warmup: int = 3, compile: bool = False) -> list[str]:
    """Measure and return the result lines (overrides apply to every config, e.g. train.batch=128).

    With ``compile``, every kind is measured eagerly and with ``train.compile`` (its backend from the
    overrides, default inductor), interleaved in the same loop; a compiled case's first step compiles it
    (timed and reported apart) and it then takes ``warmup + 2`` more steps before timing starts. Every case
    takes at least one warm-up step.
    """
    overrides = overrides or []
    warmup = max(warmup, 1)  # the first step is always untimed
    cases = [f"{kind}{suffix}" for kind in KINDS for suffix in ("", COMPILED) if compile or not suffix]
    first_step: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers: dict[str, Trainer] = {}
        try:
            for case in cases:
                kind = case.removesuffix(COMPILED)
                config = load_config(
                    None,
                    [
                        f"model.g.kind={kind}",
                        f"model.d.kind={kind}",
                        f"train.runs_dir={tmp}",
                        "train.progress=false",
                        "metrics.names=[]",  # the steps only: no FID weights to load per case
                        *overrides,
                        f"train.compile={str(case.endswith(COMPILED)).lower()}",
                    ],
                )
                trainers[case] = Trainer(config)
                trainers[case].log.stream = None  # quiet
            times: dict[str, list[float]] = {case: [] for case in cases}
            for case, trainer in trainers.items():
                first_step[case] = _timed_step(trainer)
                for _ in range(warmup - 1 + (COMPILE_WARMUP + 1 if case.endswith(COMPILED) else 0)):
                    trainer.step()
            for _ in range(steps):
                for case, trainer in trainers.items():
                    times[case].append(_timed_step(trainer))
        finally:
            for trainer in trainers.values():
                trainer.close()
    config = trainers["scs"].config.train
    batch, device = config.batch, trainers["scs"].accelerator.device
    rate = {case: batch / statistics.median(t) for case, t in times.items()}
    warm = f"{warmup} warm-up" + (f" ({warmup + COMPILE_WARMUP} after compiling)" if compile else "")
    lines = [
        f"training-step benchmark: batch {batch}, {steps} interleaved steps after {warm}, {device}, "
        f"{torch.get_num_threads()} threads, default topology ({' '.join(overrides) or 'no overrides'})",
    ]
    for case in cases:
        ms = 1e3 * statistics.median(times[case])
        ratio = rate["conv"] / rate[case]
        lines.append(f"{case:<15} {ms:8.1f} ms/step {rate[case]:9.1f} images/s   {ratio:.2f}x DCGAN time")
    lines.append(f"SCS-GAN step / DCGAN step: {rate['conv'] / rate['scs']:.2f} (target <= 1.20, goal 1.10)")
    if compile:
        speed = ", ".join(f"{kind} {rate[kind] / rate[kind + COMPILED]:.2f}x" for kind in KINDS)
        lines.append(f"compiled step / eager step ({config.compile_backend}): {speed}")
        first = ", ".join(
            f"{kind} {first_step[kind + COMPILED]:.1f} s (eager {first_step[kind]:.2f} s)" for kind in KINDS
        )
        lines.append(f"first step, with compilation: {first}")
    return lines
