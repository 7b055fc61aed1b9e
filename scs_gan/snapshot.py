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
from safetensors.torch import load_file, save_file
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


def save_pretrained(generator: nn.Module, directory: str | Path, run_config: Any | None = None) -> Path:
    """Save in the Hugging Face Hub layout: ``config.json`` + ``model.safetensors`` in ``directory``.

    ``run_config`` (a RunConfig) defaults to the one the generator was loaded with, if any; the directory can
    be uploaded to the Hub as it is and read back with :func:`load_generator` / ``Generator.from_pretrained``.
    """
    from .training.config import RunConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = run_config or getattr(generator, "snapshot_config", None)
    if config is None:
        config = RunConfig()
        config.model.g = generator.config
        config.model.z_dim = generator.z_dim
        config.data.resolution, config.data.channels = generator.resolution, generator.img_channels
    meta = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "run_config": to_dict(config)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    atomic_write(directory / "config.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return directory


def _read_pretrained(directory: Path):
    from .training.config import RunConfig

    config_file, weights = directory / "config.json", directory / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise UserError(f"{str(directory)!r} is not a saved generator (it needs config.json and model.safetensors)")
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{config_file} is not valid JSON ({error})") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise UserError(f"{str(directory)!r} holds no scs_gan generator (config.json has no '{SNAPSHOT_FORMAT}' tag)")
    if meta.get("version") != SNAPSHOT_VERSION:
        raise UserError(
            f"{str(directory)!r} has format version {meta.get('version')}, this scs_gan reads version "
            f"{SNAPSHOT_VERSION}; use the scs_gan version that wrote it"
        )
    try:
        config = from_dict(RunConfig, meta["run_config"])
        state = load_file(str(weights))
    except UserError as error:
        raise UserError(f"{str(directory)!r} was written with a different config schema: {error}") from None
    except (KeyError, SafetensorError, OSError) as error:
        raise UserError(f"{str(directory)!r} is damaged ({error})") from None
    return config, state, {}


def _resolve_location(path: str | Path) -> Path:
    """A local file or directory; a Hub repository id (``user/name``) is downloaded when huggingface_hub can."""
    local = Path(path).expanduser()
    if local.exists() or str(path).endswith(".safetensors") or str(path).count("/") != 1:
        return local
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return local
    try:
        return Path(snapshot_download(str(path), allow_patterns=["config.json", "model.safetensors"]))
    except Exception as error:  # offline, unknown repository, ...
        raise UserError(f"{str(path)!r} is neither a local snapshot nor a reachable Hub repository ({error})") from None


def load_generator(path: str | Path, device: str | None = None) -> nn.Module:
    """The generator in a snapshot file or a ``save_pretrained`` directory (or Hub id), in eval mode.

    The returned module maps latents ``(N, z_dim)`` to images in [-1, 1]; ``.snapshot_config`` holds the
    run's configuration. Nothing is unpickled: the network is built from the config, then loaded strictly.
    """
    from .models import build_generator

    location = _resolve_location(path)
    if location.is_dir():
        config, state, extra = _read_pretrained(location)
    else:
        config, state, extra = read_snapshot(location)
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
