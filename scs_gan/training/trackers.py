"""Experiment trackers through Accelerate: wandb and TensorBoard (scalars, metrics, sample grids, config).

The wandb run id is kept in the training progress, so a resumed run continues the same wandb run. wandb's
mode follows ``WANDB_MODE`` (online, offline - sync later with ``wandb sync`` - or disabled).
"""

from __future__ import annotations

import importlib.util
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator

from ..config import to_dict
from ..errors import UserError

_PACKAGES = {
    "wandb": ("wandb", "pip install scs-gan[wandb]"),
    "tensorboard": ("tensorboard", "pip install tensorboard"),
}


def check_installed(names: list[str]) -> None:
    """A requested tracker that is not installed is an error now, not silence later."""
    for name in names:
        package, hint = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"train.trackers asks for {name}, which is not installed: {hint}")


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, bool | int | float | str):
        out[prefix] = value
    else:
        out[prefix] = str(value)  # lists and None as text: hyperparameter stores take scalars only


class Trackers:
    """Logs to whatever trackers the run has (possibly none); every method is safe on every process."""

    def __init__(self, accelerator: Accelerator, names: list[str]) -> None:
        self.accelerator, self.names = accelerator, names

    def log_stats(self, record: dict[str, Any], nimg: int) -> None:
        if not self.names:
            return
        values: dict[str, Any] = {}
        for key, value in record.items():
            if key in ("p", "q"):
                for layer, stats in value.items():
                    for stat, number in stats.items():
                        values[f"{key}/{layer}/{stat}"] = number
            elif isinstance(value, int | float) and value is not None:
                values[f"train/{key}"] = value
        self.accelerator.log(values, step=nimg)

    def log_metrics(self, values: dict[str, float], nimg: int) -> None:
        if self.names:
            self.accelerator.log({f"metrics/{k}": v for k, v in values.items()}, step=nimg)

    def log_grid(self, name: str, grid: np.ndarray, nimg: int) -> None:
        """A uint8 ``(H, W, C)`` sample grid (main process)."""
        if not self.names or not self.accelerator.is_main_process:
            return
        rgb = grid if grid.shape[2] == 3 else np.repeat(grid, 3, axis=2)
        for tracker_name in self.names:
            tracker = self.accelerator.get_tracker(tracker_name)
            if tracker_name == "tensorboard":
                tracker.log_images({name: rgb[None]}, step=nimg, dataformats="NHWC")
            else:
                tracker.log_images({name: [rgb]}, step=nimg)


def start(accelerator: Accelerator, config: Any, run_dir: Path, progress: Any) -> Trackers:
    """Initialise the configured trackers (every process must call this)."""
    names = list(config.train.trackers)
    if not names:
        return Trackers(accelerator, [])
    if progress.tracker_run_id is None:
        progress.tracker_run_id = secrets.token_hex(4)
    flat: dict[str, Any] = {}
    _flat("", to_dict(config), flat)
    flat["run_dir"] = str(run_dir)
    accelerator.project_configuration.logging_dir = str(run_dir / "tensorboard")
    init_kwargs = {
        "wandb": {"name": run_dir.name, "dir": str(run_dir), "id": progress.tracker_run_id, "resume": "allow"},
    }
    accelerator.init_trackers(config.train.wandb_project, config=flat, init_kwargs=init_kwargs)
    return Trackers(accelerator, names)
