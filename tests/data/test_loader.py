"""Training batches: deterministic, sharded without duplicates, flipped on request, exactly resumable."""

from __future__ import annotations

import re

import pytest
import torch

from scs_gan.data import DataConfig, InfiniteLoader, build_dataset, shard_indices, to_float
from scs_gan.data.dataset import TensorImageDataset


def numbered_dataset(count: int) -> TensorImageDataset:
    """Image i has every pixel equal to i (so batches reveal which items they hold)."""
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 4, 4).contiguous()
    return TensorImageDataset("numbered", "test", images, {})


def ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0, 0, 0].tolist()


def test_batches_are_deterministic_and_cover_each_epoch_once():
    dataset = numbered_dataset(24)
    a, b = InfiniteLoader(dataset, 8, seed=3), InfiniteLoader(dataset, 8, seed=3)
    first = [ids(next(a)) for _ in range(6)]
    assert first == [ids(next(b)) for _ in range(6)]
    assert sorted(i for batch in first[:3] for i in batch) == list(range(24))  # epoch 0 is a permutation
    assert sorted(i for batch in first[3:] for i in batch) == list(range(24))  # and so is epoch 1
    assert first[:3] != first[3:]
    assert first != [ids(next(InfiniteLoader(dataset, 8, seed=4))) for _ in range(6)]


def test_batches_span_epochs_when_the_set_is_small():
    loader = InfiniteLoader(numbered_dataset(5), 4, seed=0)
    stream = [i for _ in range(5) for i in ids(next(loader))]
    for epoch in range(4):
        assert sorted(stream[epoch * 5 : epoch * 5 + 5]) == list(range(5))


def test_processes_get_disjoint_shards_of_each_global_batch():
    dataset = numbered_dataset(32)
    single = InfiniteLoader(dataset, 8, seed=1, world_size=1)
    ranks = [InfiniteLoader(dataset, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(8):
        global_batch = ids(next(single))
        assert ids(next(ranks[0])) + ids(next(ranks[1])) == global_batch


def test_resume_gives_exactly_the_same_batches():
    dataset = numbered_dataset(10)
    loader = InfiniteLoader(dataset, 3, seed=7, hflip=True)
    reference = [next(loader) for _ in range(9)]
    resumed = InfiniteLoader(dataset, 3, seed=7, hflip=True)
    for _ in range(4):
        next(resumed)
    state = resumed.state_dict()
    fresh = InfiniteLoader(dataset, 3, seed=7, hflip=True)
    fresh.load_state_dict(state)
    for want in reference[4:]:
        assert torch.equal(next(fresh), want)


def test_hflip_flips_about_half_and_only_when_asked():
    images = torch.zeros(64, 1, 2, 2, dtype=torch.uint8)
    images[:, :, :, 0] = 255  # left column white
    dataset = TensorImageDataset("halves", "test", images, {})
    batch = next(InfiniteLoader(dataset, 64, seed=0, hflip=True))
    flipped = (batch[:, 0, 0, 1] == 255).sum().item()
    assert 16 < flipped < 48
    assert (next(InfiniteLoader(dataset, 64, seed=0))[:, 0, 0, 0] == 255).all()


def test_streaming_and_in_memory_give_the_same_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(12):
        Image.new("L", (8, 8), color=i * 20).save(folder / f"{i:02d}.png")
    in_memory = build_dataset(DataConfig(name="folder", path=str(folder), resolution=8))
    streamed = build_dataset(DataConfig(name="folder", path=str(folder), resolution=8, in_memory_mb=0))
    a = InfiniteLoader(in_memory, 5, seed=2, hflip=True)
    b = InfiniteLoader(streamed, 5, seed=2, hflip=True, workers=2)
    for _ in range(6):
        assert torch.equal(next(a), next(b))


def test_shards_for_statistics_cover_everything_once():
    shards = [list(shard_indices(10, r, 3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_to_float_maps_uint8_to_minus_one_one_and_back_exactly():
    values = torch.arange(256, dtype=torch.uint8)
    floats = to_float(values)
    assert floats[0] == -1 and floats[-1] == 1
    back = (floats * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(back, values)


def test_invalid_batch_size():
    with pytest.raises(ValueError):
        InfiniteLoader(numbered_dataset(3), 0)


def test_the_data_benchmark_measures_every_pipeline_and_shows_its_phases(capfd):
    from scs_gan.data.bench import run

    lines = run(count=20, resolution=8, batch=4, workers=1, seconds=0.05)
    assert lines[0].startswith("data pipeline benchmark: batch 4, 1 workers")
    assert lines[1].startswith("mnist5k: load") and lines[2].startswith("folder: wrote 20 PNGs (8x8 RGB)")
    assert "folder, in memory: first decode" in lines[3] and "folder, streamed" in lines[4]
    assert all(re.search(r"loader [\d,]+ images/s$", line) for line in (lines[1], lines[3], lines[4]))
    assert re.search(r"data pipeline benchmark: .*6/6 \[\d\d:\d\d<\d\d:\d\d", capfd.readouterr().err)
