"""Image datasets by name, all yielding uint8 images of one resolution and channel count.

>>> from scs_gan.data import DataConfig, build_dataset, InfiniteLoader, to_float
>>> dataset = build_dataset(DataConfig(name="mnist5k", resolution=32, channels=1))
>>> batch = to_float(next(InfiniteLoader(dataset, batch_size=64, seed=0)))   # (64, 1, 32, 32) in [-1, 1]
"""

from .dataset import DataConfig, ImageDataset, TensorImageDataset
from .loader import InfiniteLoader, shard_indices, to_float
from .sources import SOURCES, build_dataset, dataset_names, register

__all__ = [
    "SOURCES",
    "DataConfig",
    "ImageDataset",
    "InfiniteLoader",
    "TensorImageDataset",
    "build_dataset",
    "dataset_names",
    "register",
    "shard_indices",
    "to_float",
]
