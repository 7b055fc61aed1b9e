"""Inference snapshots: the EMA generator's weights and the run's config in one safetensors file.

No pickle is ever involved: the network is rebuilt from the stored config and the tensors are loaded into
it, strictly. Snapshots carry a format name and version so that files from other tools or from an
incompatible version are refused with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import from_dict, to_dict
from .errors import UserError
from .io import atomic_write

SNAPSHOT_FORMAT = "scs_gan.generator"
SNAPSHOT_VERSION = 1


def save_snapshot(path: str | Path, generator: nn.Module, config: Any, extra: dict[str, Any] | None = None) -> None:
    """Write ``generator``'s weights with ``config`` (a RunConfig) and ``extra`` metadata, atomically."""
    metadata = {
        "format": SNAPSHOT_FORMAT,
        "version": str(SNAPSHOT_VERSION),
        "config": json.dumps(to_dict(config)),
        "extra": json.dumps(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata))


def read_snapshot(path: str | Path):
    """(config, state_dict, extra) of a snapshot file; every way it can be wrong is a UserError."""
    from .training.config import RunConfig

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"snapshot {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{str(path)!r} is not a readable safetensors snapshot ({error})") from None
    if metadata.get("format") != SNAPSHOT_FORMAT:
        raise UserError(f"{str(path)!r} is not an scs_gan generator snapshot (no '{SNAPSHOT_FORMAT}' format tag)")
    version = metadata.get("version")
    if version != str(SNAPSHOT_VERSION):
        raise UserError(
            f"snapshot {str(path)!r} has format version {version}, this scs_gan reads version {SNAPSHOT_VERSION}; "
            "use the scs_gan version that wrote it"
        )
    try:
        config = from_dict(RunConfig, json.loads(metadata["config"]))
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, json.JSONDecodeError) as error:
        raise UserError(f"snapshot {str(path)!r} has damaged metadata ({error})") from None
    except UserError as error:
        raise UserError(f"snapshot {str(path)!r} was written with a different config schema: {error}") from None
    return config, state, extra


def load_generator(path: str | Path, device: str | None = None) -> nn.Module:
    """The EMA generator stored in a snapshot, in eval mode, ready for sampling."""
    from .models import build_generator

    config, state, extra = read_snapshot(path)
    generator = build_generator(config.model, config.data.resolution, config.data.channels)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"snapshot {str(path)!r} does not match the network its config describes ({first})") from None
    generator.eval().requires_grad_(False)
    generator.snapshot_config = config  # type: ignore[attr-defined]
    generator.snapshot_extra = extra  # type: ignore[attr-defined]
    return generator.to(device) if device else generator
