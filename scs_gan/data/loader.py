"""Training batches: endless, deterministic, sharded across processes and exactly resumable.

The sample stream is the concatenation of per-epoch permutations of the dataset, each drawn from
``(seed, epoch)``. Global batch ``k`` is stream items ``[k * B * W, (k + 1) * B * W)`` for batch ``B`` per
process and ``W`` processes, and process ``r`` takes its ``r``-th slice of ``B``. The loader's whole state is
the number of global batches consumed, so a resumed run continues with exactly the batches the uninterrupted
run would have seen. Statistics (FID reference features) use :func:`shard_indices` instead, which covers the
set exactly once across processes, with no padding and no duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from .dataset import ImageDataset


def to_float(batch: Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 images to float32 in [-1, 1] (0 -> -1, 255 -> 1), on ``device``."""
    if device is not None:
        batch = batch.to(device, non_blocking=True)
    return batch.float().div_(127.5).sub_(1.0)


def shard_indices(count: int, rank: int, world_size: int) -> range:
    """This process's share of ``range(count)``: every item exactly once over all processes."""
    return range(rank, count, world_size)


class _Stream:
    """The endless sample stream: per-epoch permutations and flip decisions, computed lazily."""

    def __init__(self, count: int, seed: int, hflip: bool) -> None:
        self.count, self.seed, self.hflip = count, seed, hflip
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)
        self._flips = torch.empty(0, dtype=torch.bool)

    def _load_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._order = torch.randperm(self.count, generator=gen)
            self._flips = torch.rand(self.count, generator=gen) < 0.5 if self.hflip else torch.zeros(0, dtype=bool)
            self._epoch = epoch

    def items(self, start: int, length: int) -> tuple[Tensor, Tensor | None]:
        """Dataset indices (and flip flags) of stream items ``[start, start + length)``."""
        indices, flips = [], []
        while length > 0:
            epoch, offset = divmod(start, self.count)
            self._load_epoch(epoch)
            take = min(length, self.count - offset)
            indices.append(self._order[offset : offset + take])
            if self.hflip:
                flips.append(self._flips[offset : offset + take])
            start, length = start + take, length - take
        return torch.cat(indices), (torch.cat(flips) if self.hflip else None)


class _BatchIndexSampler(Sampler):
    """Yields this process's index lists, batch after batch, from a given global batch on."""

    def __init__(self, stream: _Stream, batch_size: int, rank: int, world_size: int, start: int) -> None:
        self.stream, self.batch_size, self.start = stream, batch_size, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        batch = self.start
        while True:
            first = (batch * self.world_size + self.rank) * self.batch_size
            indices, flips = self.stream.items(first, self.batch_size)
            flags = flips.tolist() if flips is not None else [False] * len(indices)
            yield [(int(i), bool(f)) for i, f in zip(indices.tolist(), flags, strict=True)]
            batch += 1


class _FlippingView(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> Tensor:
        index, flip = item
        image = self.dataset[index]
        return image.flip(-1) if flip else image


class InfiniteLoader:
    """Endless uint8 batches ``(B, C, R, R)`` for process ``rank`` of ``world_size``; see the module docstring.

    In-memory datasets are indexed directly (no per-item Python work); streamed ones are decoded by
    ``workers`` processes. ``state_dict()`` / ``load_state_dict()`` hold the position for exact resume.
    With ``labels``, each batch comes with its images' classes, ``(images, classes)``; only in-memory datasets
    with labels have them.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        hflip: bool = False,
        pin_memory: bool = False,
        labels: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if labels and dataset.labels is None:
            raise ValueError(f"dataset {dataset.name} has no labels in memory")
        self.labels = labels
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size = rank, world_size
        self.workers, self.pin_memory = workers, pin_memory
        self.stream = _Stream(len(dataset), seed, hflip)
        self.batches_done = 0
        self._iterator: Iterator[Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The loader's position: global batches consumed."""
        return {"batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.batches_done = int(state["batches_done"])
        self._iterator = None

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Tensor | tuple[Tensor, Tensor]:
        if self.labels:
            batch = self._in_memory_batch(self.batches_done, labels=True)
        elif self.dataset.images is not None:
            batch = self._in_memory_batch(self.batches_done)
        else:
            if self._iterator is None:
                self._iterator = self._streaming_iterator(self.batches_done)
            batch = next(self._iterator)
        self.batches_done += 1
        return batch

    def _in_memory_batch(self, batch_index: int, labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        first = (batch_index * self.world_size + self.rank) * self.batch_size
        indices, flips = self.stream.items(first, self.batch_size)
        batch = self.dataset.images[indices]  # type: ignore[index]
        if flips is not None and bool(flips.any()):
            batch[flips] = batch[flips].flip(-1)
        batch = batch.pin_memory() if self.pin_memory else batch
        return (batch, self.dataset.labels[indices]) if labels else batch  # type: ignore[index]

    def _streaming_iterator(self, start: int) -> Iterator[Tensor]:
        sampler = _BatchIndexSampler(self.stream, self.batch_size, self.rank, self.world_size, start)
        loader = DataLoader(
            _FlippingView(self.dataset),
            batch_sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )
        return iter(loader)
