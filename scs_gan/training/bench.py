"""Training-step benchmark: images/s of a full step (D and G phases) for networks of one topology whose
layers are SCS, cosine or convolutions, measured side by side (interleaved steps) in one process; with
``compile``, each kind also runs with ``train.compile`` in the same loop."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import RunConfig, load_config
from .trainer import Trainer

KINDS = ("scs", "cosine", "conv")
COMPILED = "+compile"  # the suffix of a compiled case's name, e.g. scs+compile
COMPILE_WARMUP = 2  # extra warm-up steps of a compiled case after its first (compiling) step


def _nothing() -> None:
    pass


def _timed_step(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.step()
    if trainer.accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@dataclass
class StepTimes:
    """What :func:`interleaved_step_times` measured: per case, its configuration, the seconds of its first
    (untimed) step and of its timed steps; and the device the trainers ran on."""

    configs: dict[str, RunConfig]
    first_step: dict[str, float]
    times: dict[str, list[float]]
    device: str


def interleaved_step_times(
    cases: dict[str, list[str]],
    steps: int,
    warmups: dict[str, int],
    before_step: dict[str, Callable[[], None]] | None = None,
) -> StepTimes:
    """Time full training steps of several configurations side by side.

    ``cases`` maps a name to dotted overrides of the default configuration (metrics and the trainers' own
    progress bars are off, runs go to a temporary directory). Each case takes one untimed first step, then
    ``warmups[name]`` more (default 0); then the cases take ``steps`` steps in turn, so a change in the host's
    load falls on all of them alike. ``before_step[name]``, if given, runs (untimed) before each of that case's
    steps, e.g. to switch a process-wide setting for it. One bar on stderr counts every step (warm-up and timed),
    with its rate and ETA.
    """
    before_step = before_step or {}
    first_step: dict[str, float] = {}
    total = sum(1 + warmups.get(name, 0) + steps for name in cases)
    bar = tqdm(
        total=total,
        desc=f"timing training steps of {', '.join(cases)} side by side",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainers: dict[str, Trainer] = {}
        try:
            for name, overrides in cases.items():
                # the steps only: no FID weights to load per case
                quiet = [f"train.runs_dir={tmp}", "train.progress=false", "metrics.names=[]"]
                trainers[name] = Trainer(load_config(None, [*quiet, *overrides]))
                trainers[name].log.stream = None  # quiet
            times: dict[str, list[float]] = {name: [] for name in cases}
            for name, trainer in trainers.items():
                before_step.get(name, _nothing)()
                first_step[name] = _timed_step(trainer)
                bar.update()
                for _ in range(warmups.get(name, 0)):
                    trainer.step()
                    bar.update()
            for _ in range(steps):
                for name, trainer in trainers.items():
                    before_step.get(name, _nothing)()
                    times[name].append(_timed_step(trainer))
                    bar.update()
        finally:
            bar.close()
            for trainer in trainers.values():
                trainer.close()
    configs = {name: trainer.config for name, trainer in trainers.items()}
    return StepTimes(configs, first_step, times, str(next(iter(trainers.values())).accelerator.device))


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
    measured = interleaved_step_times(
        {
            case: [
                f"model.g.kind={case.removesuffix(COMPILED)}",
                f"model.d.kind={case.removesuffix(COMPILED)}",
                *overrides,
                f"train.compile={str(case.endswith(COMPILED)).lower()}",
            ]
            for case in cases
        },
        steps,
        {case: warmup - 1 + (COMPILE_WARMUP + 1 if case.endswith(COMPILED) else 0) for case in cases},
    )
    config, device = measured.configs["scs"].train, measured.device
    times, first_step = measured.times, measured.first_step
    batch = config.batch
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
