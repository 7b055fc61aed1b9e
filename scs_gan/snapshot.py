"""Inference snapshots: a generator's weights and what builds it, as one file or a Hub directory.

Two layouts hold the same thing:

* a single file, ``network-snapshot-*.safetensors``: the tensors, with the header (below) as JSON text under
  the metadata key ``scs_gan.generator``;
* a Hugging Face Hub directory: ``config.json`` (the header) and ``model.safetensors`` (the tensors).

The header (format version 2) is the same dictionary in both::

    {"format": "scs_gan.generator", "version": 2,
     "generator": {"z_dim": 128, "resolution": 32, "channels": 1, "g": {...model.g options...}},
     "run_config": {...the whole run's configuration, or null...},
     "extra": {"kimg": 200.0, ...}}

Only ``generator`` is parsed strictly, since it is what builds the network; ``run_config`` and ``extra`` are
kept as plain data to show and to reuse where they still fit, so renaming a training, data or metrics option
never makes a snapshot unreadable. Version-1 files and directories (the whole run config, parsed strictly,
under other keys) still load. Nothing is ever unpickled: the network is rebuilt from the header, the
tensors are checked against it (names, shapes, finite values) before anything is allocated, then loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .config import from_dict, to_dict
from .errors import UserError
from .io import atomic_write, atomic_write_text
from .models import Generator, GeneratorConfig, ModelConfig

SNAPSHOT_FORMAT = "scs_gan.generator"
SNAPSHOT_VERSION = 2
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"
# The largest network a snapshot may describe, in parameters: far above any GAN this project trains, far
# below an allocation that would take a machine down.
MAX_PARAMETERS = 2_000_000_000


@dataclass
class GeneratorSpec:
    """What builds a generator: latent size, image shape, the ``model.g`` options and the number of classes
    (0: unconditional)."""

    z_dim: int
    resolution: int
    channels: int
    g: GeneratorConfig
    num_classes: int = 0

    @classmethod
    def of(cls, generator: Generator) -> GeneratorSpec:
        """The spec of an existing generator."""
        g = generator
        return cls(g.z_dim, g.resolution, g.img_channels, g.config, g.num_classes)

    def build(self, device: torch.device | str | None = None) -> Generator:
        """A new generator with this architecture (initial weights) on ``device``."""
        with torch.device(device or "cpu"):
            return Generator(self.g, self.z_dim, self.resolution, self.channels, self.num_classes)


@dataclass
class Snapshot:
    """A snapshot as read from disk: the spec, the tensors, and the opaque run data."""

    spec: GeneratorSpec
    state: dict[str, Tensor]
    run_config: dict[str, Any] | None
    extra: dict[str, Any]
    version: int
    source: str


def _header(generator: Generator, run_config: Mapping[str, Any] | Any | None, extra: Mapping[str, Any] | None):
    if run_config is not None and dataclasses.is_dataclass(run_config):
        run_config = to_dict(run_config)
    spec = GeneratorSpec.of(generator)
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "generator": {
            "z_dim": spec.z_dim,
            "resolution": spec.resolution,
            "channels": spec.channels,
            "num_classes": spec.num_classes,
            "g": to_dict(spec.g),
        },
        "run_config": dict(run_config) if run_config is not None else None,
        "extra": dict(extra or {}),
    }


def _tensors(generator: Generator) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}


def save_snapshot(
    generator: Generator,
    path: str | Path,
    run_config: Mapping[str, Any] | Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``generator`` as one safetensors file at ``path``, atomically; returns the path.

    ``run_config`` (a mapping, or a configuration dataclass) and ``extra`` are stored as plain data.
    """
    path = Path(path)
    header = json.dumps(_header(generator, run_config, extra))
    tensors = _tensors(generator)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), {"format": "pt", SNAPSHOT_FORMAT: header}))
    return path


def save_pretrained(
    generator: Generator,
    directory: str | Path,
    run_config: Mapping[str, Any] | Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``generator`` in the Hub layout (``config.json`` + ``model.safetensors``) in ``directory``.

    ``run_config`` and ``extra`` default to those the generator was loaded with (see :func:`load_generator`).
    The directory can be uploaded to the Hub as it is and read back with :func:`load_generator`.
    """
    info = getattr(generator, "snapshot_info", None)
    if run_config is None and info is not None:
        run_config = info.run_config
    if extra is None and info is not None:
        extra = info.extra
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    header = _header(generator, run_config, extra)
    tensors = _tensors(generator)
    atomic_write(directory / HUB_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    atomic_write_text(directory / HUB_CONFIG, json.dumps(header, indent=2))
    return directory


# ------------------------------------------------------------------------------------------------ reading


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where} is damaged: its generator {name} is {value!r}, not a positive integer")
    return value


# Generator options added after snapshots were first written, with the value an older header (without them) means:
# an embedding as long as the code, no per-layer modulation
G_ADDED_LATER: dict[str, Any] = {"class_dim": 0, "class_mod": False, "latent_mod": False}


def _parse_spec(section: Any, where: str) -> GeneratorSpec:
    if not isinstance(section, dict):
        raise UserError(f"{where} is damaged: its generator description is not a mapping")
    g_section = section.get("g")
    if isinstance(g_section, dict):  # options absent from older headers: what those generators were
        g_section = {**G_ADDED_LATER, **g_section}
    try:
        g = from_dict(GeneratorConfig, g_section, "model.g")
        ModelConfig(g=g).validate()
    except UserError as error:
        raise UserError(f"{where} describes a generator this scs_gan cannot build ({error})") from None
    classes = section.get("num_classes", 0)  # absent before conditional generators existed
    if classes != 0:
        classes = _positive_int(classes, "num_classes", where)
    return GeneratorSpec(
        _positive_int(section.get("z_dim"), "z_dim", where),
        _positive_int(section.get("resolution"), "resolution", where),
        _positive_int(section.get("channels"), "channels", where),
        g,
        classes,
    )


def _from_header(header: Any, where: str) -> tuple[GeneratorSpec, dict[str, Any] | None, dict[str, Any], int]:
    """(spec, run_config, extra, version) of a header of any known version."""
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise UserError(f"{where} is not an scs_gan generator snapshot (no '{SNAPSHOT_FORMAT}' format tag)")
    version = header.get("version")
    if version == 1:  # the whole run config under "config" (file) or "run_config" (directory)
        run_config = header.get("run_config", header.get("config"))
        if not isinstance(run_config, dict):
            raise UserError(f"{where} is damaged: its run configuration is not a mapping")
        model, data = run_config.get("model"), run_config.get("data")
        if not isinstance(model, dict) or not isinstance(data, dict):
            raise UserError(f"{where} is damaged: its run configuration lacks the model or data section")
        section = {
            "z_dim": model.get("z_dim", 128),
            "num_classes": model.get("num_classes", 0),
            "g": model.get("g", {}),
            "resolution": data.get("resolution", 32),
            "channels": data.get("channels", 1),
        }
        extra = header.get("extra", {})
        return _parse_spec(section, where), run_config, extra if isinstance(extra, dict) else {}, 1
    if version != SNAPSHOT_VERSION:
        raise UserError(
            f"{where} has format version {version!r}, this scs_gan reads versions 1 and {SNAPSHOT_VERSION}; "
            "use a newer scs_gan"
        )
    run_config, extra = header.get("run_config"), header.get("extra", {})
    if run_config is not None and not isinstance(run_config, dict):
        raise UserError(f"{where} is damaged: its run configuration is not a mapping")
    if not isinstance(extra, dict):
        raise UserError(f"{where} is damaged: its extra data is not a mapping")
    return _parse_spec(header.get("generator"), where), run_config, extra, version


def _read_tensors(path: Path, where: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{where} is not a readable safetensors file ({error})") from None
    return metadata, state


def _read_file(path: Path) -> Snapshot:
    where = f"snapshot {str(path)!r}"
    metadata, state = _read_tensors(path, where)
    try:
        if SNAPSHOT_FORMAT in metadata:
            header = json.loads(metadata[SNAPSHOT_FORMAT])
        elif metadata.get("format") == SNAPSHOT_FORMAT:  # version 1: one metadata key per field, as strings
            version = metadata.get("version")
            header = {
                "format": SNAPSHOT_FORMAT,
                "version": int(version) if version is not None and version.isdigit() else version,
                "config": json.loads(metadata["config"]),
                "extra": json.loads(metadata.get("extra", "{}")),
            }
        else:
            header = None
    except (KeyError, json.JSONDecodeError) as error:
        raise UserError(f"{where} has damaged metadata ({error})") from None
    spec, run_config, extra, version = _from_header(header, where)
    return Snapshot(spec, state, run_config, extra, version, str(path))


def _read_directory(directory: Path) -> Snapshot:
    where = f"{str(directory)!r}"
    config_file, weights = directory / HUB_CONFIG, directory / HUB_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise UserError(f"{where} is not a saved generator (it needs {HUB_CONFIG} and {HUB_WEIGHTS})")
    try:
        header = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise UserError(f"{config_file} is not readable JSON ({error})") from None
    spec, run_config, extra, version = _from_header(header, where)
    _, state = _read_tensors(weights, where)
    return Snapshot(spec, state, run_config, extra, version, str(directory))


def _check_tensors(snapshot: Snapshot) -> None:
    """Compare the tensors with the network the spec describes, without allocating that network."""
    where = f"snapshot {snapshot.source!r}"
    try:
        expected = snapshot.spec.build("meta")
    except (ValueError, RuntimeError, OverflowError) as error:
        raise UserError(f"{where} describes a generator this scs_gan cannot build ({error})") from None
    size = sum(math.prod(t.shape) for t in expected.state_dict().values())
    if size > MAX_PARAMETERS:
        raise UserError(f"{where} describes a generator of {size:,} values, more than the {MAX_PARAMETERS:,} allowed")
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in snapshot.state.items()}
    if shapes != found:
        missing = sorted(set(shapes) - set(found))
        unexpected = sorted(set(found) - set(shapes))
        wrong = sorted(k for k in set(shapes) & set(found) if shapes[k] != found[k])
        detail = (
            f"missing {missing[0]}"
            if missing
            else f"unexpected {unexpected[0]}"
            if unexpected
            else f"{wrong[0]} has shape {list(found[wrong[0]])}, expected {list(shapes[wrong[0]])}"
        )
        raise UserError(f"{where} does not match the network its config describes ({detail})")
    for name, tensor in snapshot.state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{where} holds non-finite weights ({name}); it cannot generate images")


def read_snapshot(path: str | Path) -> Snapshot:
    """Read a snapshot file or a Hub-layout directory (any known version), checked but not yet built."""
    location = Path(path).expanduser()
    if location.is_dir():
        snapshot = _read_directory(location)
    elif location.is_file():
        snapshot = _read_file(location)
    else:
        raise UserError(f"snapshot {str(path)!r} does not exist")
    _check_tensors(snapshot)
    return snapshot


@dataclass
class SnapshotInfo:
    """What :func:`load_generator` attaches to the generator as ``.snapshot_info``."""

    version: int
    run_config: dict[str, Any] | None
    extra: dict[str, Any]
    source: str


def _resolve_location(path: str | Path) -> Path:
    """A local file or directory; a Hub repository id (``user/name``) is downloaded when huggingface_hub can."""
    local = Path(path).expanduser()
    if local.exists() or str(path).endswith(".safetensors") or str(path).count("/") != 1:
        return local
    try:
        from huggingface_hub import snapshot_download  # optional: only for Hub ids
    except ImportError:
        return local
    try:
        return Path(snapshot_download(str(path), allow_patterns=[HUB_CONFIG, HUB_WEIGHTS]))
    except Exception as error:  # offline, unknown repository, ...
        raise UserError(f"{str(path)!r} is neither a local snapshot nor a reachable Hub repository ({error})") from None


def load_generator(path: str | Path, device: torch.device | str | None = None) -> Generator:
    """The generator in a snapshot file or a :func:`save_pretrained` directory (or Hub id), in eval mode.

    The returned module maps latents ``(N, z_dim)`` to images in [-1, 1]; ``.snapshot_info`` holds the
    format version, the run's configuration (plain data, or None) and the extra data (such as ``kimg``).
    """
    snapshot = read_snapshot(_resolve_location(path))
    generator = snapshot.spec.build()
    generator.load_state_dict(snapshot.state, strict=True)  # names and shapes were checked by read_snapshot
    generator.eval().requires_grad_(False)
    generator.snapshot_info = SnapshotInfo(  # type: ignore[attr-defined]
        snapshot.version, snapshot.run_config, snapshot.extra, snapshot.source
    )
    return generator.to(device) if device else generator
