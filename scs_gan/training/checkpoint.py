"""Resumable checkpoints: where a run is (:class:`Progress`), saving and loading the full state, and the
checks that replicas agree.

A checkpoint is a folder ``checkpoints/checkpoint-<nimg>/`` holding Accelerate's state (models, optimisers,
gradient scaler, every process's RNG states), the EMA generator (``ema.safetensors``) and ``progress.json``.
It is written under a temporary name and renamed when complete, so a folder with the final name is whole
unless the disk damaged it later; :func:`verify_checkpoint` reads every file of one to tell.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import UserError
from .rundir import find_run_dirs, keep_previous

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d{9})$")


LOOKAHEAD = "lookahead.safetensors"  # train.lookahead_k's slow weights of G and D, in parameter order


@dataclass
class Progress:
    """Counters that, with the checkpointed models, optimisers and RNG states, define where a run is."""

    cur_nimg: int = 0
    step: int = 0
    tick: int = 0
    tick_start_nimg: int = 0
    nan_skips: int = 0
    consecutive_bad: int = 0
    elapsed_s: float = 0.0
    loader: dict[str, Any] = field(default_factory=lambda: {"batches_done": 0})
    tracker_run_id: str | None = None
    best_fid: float | None = None
    augment: dict[str, Any] | None = None  # the adaptive augmentation strength's state
    lecam: list[float] | None = None  # train.lecam's moving averages of D's mean real and fake logits


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a checkpoint appears only once fully written)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(resume: str, runs_dir: str | Path) -> Path:
    """``latest`` (newest checkpoint of the newest run that has one), a run directory, or a checkpoint path."""
    if resume == "latest":
        for run in reversed(find_run_dirs(runs_dir)):
            checkpoints = list_checkpoints(run)
            if checkpoints:
                return checkpoints[-1]
        raise UserError(f"--resume latest found no checkpoint under {str(runs_dir)!r}; train first or give a path")
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserError(f"--resume {resume!r}: no such run directory or checkpoint")
    if (path / "progress.json").is_file():
        return path
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1]
    raise UserError(f"--resume {resume!r} is neither a checkpoint nor a run directory with checkpoints")


def verify_checkpoint(checkpoint: Path, num_processes: int, lookahead: bool = False) -> str | None:
    """None if every file of ``checkpoint`` reads back whole, else what is wrong (one phrase). ``lookahead``:
    the run keeps train.lookahead_k's slow weights, so their file is required too.

    Reads the safetensors files, the optimiser and scaler states and every process's RNG states through
    the same restricted loader Accelerate uses (no arbitrary pickle), and ``progress.json``.
    """
    try:
        Progress(**json.loads((checkpoint / "progress.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        return f"progress.json is unreadable ({type(error).__name__})"
    for path in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            return f"{path.name} is damaged ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
    required = ["ema.safetensors", *(f"random_states_{i}.pkl" for i in range(num_processes))]
    if lookahead:
        required.append(LOOKAHEAD)
    for name in required:
        if not (checkpoint / name).is_file():
            return f"{name} is missing"
    for path in sorted([*checkpoint.glob("*.bin"), *checkpoint.glob("*.pt"), *checkpoint.glob("*.pkl")]):
        try:
            accelerate_load(path, map_location="cpu")
        except Exception as error:  # the restricted unpickler raises many kinds for a damaged or crafted file
            return f"{path.name} is damaged or not a plain state file ({type(error).__name__})"
    return None


# torch.save's C++ writer reports a failed write as a RuntimeError without the errno ("basic_ios::clear: iostream
# error", "unexpected pos ..."); with less than this much room left on the file system, the cause was a full disk
NEARLY_FULL_BYTES = 1 << 20


def _full_disk(error: RuntimeError, where: Path) -> OSError | None:
    """The disk-full error behind ``error`` from writing under ``where``, or None if the disk has room."""
    try:
        stats = os.statvfs(where)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize >= NEARLY_FULL_BYTES:
        return None
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({str(error).splitlines()[0]})", str(where))


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    ema: nn.Module,
    progress: Progress,
    keep: int,
    slow: list[Tensor] | None = None,
) -> Path:
    """Save the full training state (collective: every process must call it); appears atomically when complete.

    ``slow``: train.lookahead_k's slow weights (the same on every process), kept in ``lookahead.safetensors``.
    """
    folder = run_dir / "checkpoints"
    final = folder / f"checkpoint-{progress.cur_nimg:09d}"
    tmp = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            state = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
            save_file(state, str(tmp / "ema.safetensors"))
            if slow:
                save_file({str(i): t.detach().cpu().contiguous() for i, t in enumerate(slow)}, str(tmp / LOOKAHEAD))
            (tmp / "progress.json").write_text(json.dumps(asdict(progress), indent=1), encoding="utf-8")
    except (OSError, SafetensorError):  # a full disk, say: the unfinished folder goes, the finished ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except RuntimeError as error:  # torch.save's writer failing, with the errno lost
        full = _full_disk(error, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from error
        raise
    if accelerator.is_main_process:
        keep_previous(final)  # the same image count saved again (resumed from an older checkpoint)
        tmp.rename(final)
        prune_checkpoints(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, checkpoint: Path, ema: nn.Module, slow: list[Tensor] | None = None
) -> Progress:
    """Restore the prepared objects, RNG states, ``ema`` and the lookahead weights ``slow`` (in place) from
    ``checkpoint``; returns its progress."""
    try:
        accelerator.load_state(str(checkpoint))
        ema.load_state_dict(load_file(str(checkpoint / "ema.safetensors")))
        if slow:
            saved = load_file(str(checkpoint / LOOKAHEAD))
            if len(saved) != len(slow):
                raise ValueError(f"{LOOKAHEAD} holds {len(saved)} tensors for {len(slow)} parameters")
            for i, t in enumerate(slow):
                t.copy_(saved[str(i)])
        return Progress(**json.loads((checkpoint / "progress.json").read_text(encoding="utf-8")))
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"cannot resume from {checkpoint}: it is damaged or from another run ({first})") from None


def checksums(modules: list[nn.Module]) -> Tensor:
    """Per-tensor sums and sums of squares in float64: identical replicas give identical vectors."""
    values = []
    for module in modules:
        for t in module.state_dict().values():
            if t.is_floating_point():
                values += [t.double().sum(), t.double().square().sum()]
    return torch.stack(values)


def replicas_identical(accelerator: Accelerator, modules: list[nn.Module]) -> bool:
    """Whether every process holds the same weights and buffers in ``modules`` (collective)."""
    sums = checksums(modules).to(accelerator.device)
    gathered = accelerator.gather(sums.unsqueeze(0)) if accelerator.num_processes > 1 else sums.unsqueeze(0)
    return bool((gathered == gathered[0]).all())
