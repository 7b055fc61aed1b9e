"""The run directory: auto-numbered, never overwritten, describing itself.

runs/00003-mnist5k32-scs/
    config.yaml        the resolved configuration
    dataset.json       the dataset summary (name, count, resolution, channels, fingerprint)
    log.txt            everything the run printed
    stats.jsonl        one JSON line per tick
    reals.png          a grid of training images
    fakes000000.png    samples from the EMA generator at each snapshot, always from the same latents
    snapshots/         network-snapshot-<kimg>.safetensors: EMA generator + config, for inference
    checkpoints/       checkpoint-<nimg>/: full training state for --resume (the last few; checkpoint.py)
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..errors import UserError
from ..io import atomic_write

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

RUN_PATTERN = re.compile(r"^(\d{5})-")


def create_run_dir(root: str | Path, desc: str) -> Path:
    """Create ``root/<next number>-<desc>``: one more than the largest number under ``root`` (a gap left by a
    deleted run is not filled), safe against another process creating one at the same time."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    safe_desc = re.sub(r"[^A-Za-z0-9._-]+", "-", desc).strip("-") or "run"
    while True:
        numbers = [int(m.group(1)) for p in root.iterdir() if (m := RUN_PATTERN.match(p.name))]
        path = root / f"{max(numbers, default=-1) + 1:05d}-{safe_desc}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue  # another process took that number; try the next


def find_run_dirs(root: str | Path) -> list[Path]:
    """Run directories under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and RUN_PATTERN.match(p.name)), key=lambda p: p.name)


class RunLog:
    """Writes to the terminal (or through ``printer``, e.g. a progress bar's) and appends to ``log.txt``."""

    def __init__(self, path: Path | None, stream: TextIO | None = sys.stdout) -> None:
        self.file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self.stream = stream
        self.printer: Callable[[str], None] | None = None

    def __call__(self, message: str) -> None:
        if self.printer is not None:
            self.printer(message)
        elif self.stream is not None:
            print(message, file=self.stream, flush=True)
        if self.file is not None:
            self.file.write(message + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and push it to disk (a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Drop lines for which ``keep(record)`` is false (resume removes lines written after its checkpoint)."""
    if not path.exists():
        return
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if keep(record):
            lines.append(line)
    atomic_write(path, lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8"))


def keep_previous(path: Path, label: str = "replaced") -> Path | None:
    """Rename an existing ``path`` (file or folder) to ``<name>.<label>-<n>`` so that nothing overwrites it.

    A run saves at the same image count twice only after resuming from an older checkpoint; the earlier
    file is kept beside the new one (damaged checkpoints are kept the same way, as ``.damaged-<n>``).
    Returns the new name of the old one, or None if there was none.
    """
    if not path.exists():
        return None
    n = 1
    while (kept := path.with_name(f"{path.name}.{label}-{n}")).exists():
        n += 1
    path.rename(kept)
    return kept


class RunLock:
    """An exclusive lock on a run directory for as long as a training process works in it.

    A second process that tries to train or resume the same run is refused at once with one sentence,
    instead of both writing the same files. The lock is the operating system's (``flock`` on ``.lock``), so
    it disappears with the process that held it, whatever way that process ended.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.file: TextIO | None = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held while training)
        if fcntl is None:
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise UserError(f"{run_dir} is in use by {holder}; wait for it to finish or stop it first") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        """Give the lock up (also happens when the process ends)."""
        if self.file is not None:
            self.file.close()
            self.file = None
