"""FID/KID of a generator against a dataset, under one named protocol, on one process or many.

Protocol names carry what they measure: ``fid2k_full`` is FID between 2,000 images generated from seeds
0..1999 by the (EMA) generator and the full real set; ``kid1k_1k`` is KID between 1,000 generated and a
fixed, evenly spread subset of 1,000 real images. FID is biased by the sample size: compare numbers only
under the same name. Generated image ``k`` always comes from seed ``k``, so the result does not depend on the
batch size or the number of processes (up to float summation order).

Real-image features are computed once and cached on disk, keyed by everything that changes them (dataset
fingerprint, which images, feature size, Inception weights, protocol version) and written atomically. Within
one call every image goes through Inception at most once: the metrics of one call share the generated images
(the largest N serves the smaller ones) and the real ones (the full set serves its subsets). The main
process shows a progress bar for each pass, unless ``progress=False``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import ImageDataset, shard_indices
from ..data.dataset import spread_subset
from ..errors import UserError
from ..images import to_uint8
from ..io import atomic_write, cache_dir
from ..latents import latents_for_seeds
from .inception import InceptionFeatures, make_fid, make_kid
from .protocol import MetricSpec, parse_metric
from .weights import weights_id

PROTOCOL_VERSION = 1
FEATURE = 2048


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_in_order(local: Tensor, count: int, device: torch.device) -> Tensor:
    """All processes' shards (``shard_indices``) of ``count`` items, reassembled in index order on every process."""
    _rank, world = _rank_world()
    if world == 1:
        return local
    per = (count + world - 1) // world
    padded = torch.zeros(per, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty(count, *local.shape[1:], dtype=local.dtype)
    for r, part in enumerate(parts):
        n = len(shard_indices(count, r, world))
        out[r::world] = part[:n].cpu()
    return out


def _implementation() -> str:
    versions = {name: importlib.metadata.version(name) for name in ("torchmetrics", "torch-fidelity")}
    return (
        f"torchmetrics {versions['torchmetrics']} FrechetInceptionDistance/KernelInceptionDistance on "
        f"torch-fidelity {versions['torch-fidelity']} InceptionV3 (TF 2015-12-05 graph), TF-compatible bilinear "
        "resize to 299 (antialias=False), uint8 inputs, grayscale repeated to RGB"
    )


class Evaluator:
    """Computes named metrics for generators against one dataset; reuses the Inception network and caches.

    With ``progress`` (the default) the main process shows a bar with rate and ETA for each Inception pass on
    stderr, and says when real features come from the cache; ``progress=False`` is silent.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        state: dict[str, Tensor],
        weights_source: str,
        device: torch.device | str = "cpu",
        batch: int = 0,
        progress: bool = True,
    ) -> None:
        self.dataset, self.device, self.progress = dataset, torch.device(device), progress
        self.batch = batch or (8 if self.device.type == "cpu" else 128)
        self.weights_source, self.weights_id = weights_source, weights_id(state)
        self.features = InceptionFeatures(state, FEATURE, batch=self.batch).to(self.device)
        # channels_last lets oneDNN pick its fastest kernels: about 2x on CPU, same results to float noise
        self.features.net.to(memory_format=torch.channels_last)

    def _bar(self, total: int, count: int, what: str) -> tqdm:
        """A bar over this process's ``total`` images of ``count`` in all, on the main process only."""
        rank, world = _rank_world()
        share = f", {total:,} on this process" if world > 1 else ""
        return tqdm(
            total=total,
            desc=what.format(count=f"{count:,}") + share,
            unit="img",
            disable=not (self.progress and rank == 0),
            dynamic_ncols=True,
            leave=None,  # kept when it is the only bar; cleared when drawn under another one (training's)
        )

    def _say(self, message: str) -> None:
        if self.progress and _rank_world()[0] == 0:
            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------------------------------------ reals

    def _real_indices(self, num_real: int | None):
        count = len(self.dataset)
        if num_real is not None and num_real > count:
            raise UserError(f"a metric asks for {num_real} real images but dataset {self.dataset.name} has {count}")
        return spread_subset(count, num_real)

    def real_features(self, num_real: int | None) -> Tensor:
        """Features of the real images of a protocol: from the cache, or computed (sharded) and cached."""
        indices = self._real_indices(num_real)
        key = hashlib.sha256(
            f"v{PROTOCOL_VERSION}:{self.dataset.fingerprint}:{len(indices)}:{num_real}:{FEATURE}:{self.weights_id}".encode()
        ).hexdigest()[:24]
        path = cache_dir("fid") / f"reals-{self.dataset.name}-{key}.safetensors"
        rank, world = _rank_world()
        if path.is_file():
            try:
                cached = load_file(str(path))["features"]
                if len(cached) == len(indices):
                    self.last_cache_hit = True
                    self._say(f"real features: cache hit ({len(cached):,} images, {path})")
                    return cached
            except (SafetensorError, OSError, KeyError):
                pass  # damaged: recompute
        self.last_cache_hit = False
        mine = [int(indices[i]) for i in shard_indices(len(indices), rank, world)]
        local = []
        what = "Inception features of {count} real images (cached for later runs)"
        with self._bar(len(mine), len(indices), what) as bar:
            for start in range(0, len(mine), self.batch):
                images = torch.stack([self.dataset[i] for i in mine[start : start + self.batch]])
                local.append(self.features(images).cpu())
                bar.update(len(images))
        local_t = torch.cat(local) if local else torch.empty(0, FEATURE)
        features = _gather_in_order(local_t, len(indices), self.device)
        if rank == 0:
            atomic_write(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp)))
        if world > 1:
            dist.barrier()
        return features

    # ------------------------------------------------------------------------------------------ fakes

    @torch.no_grad()
    def fake_features(self, generator: nn.Module, num_fake: int, z_dim: int) -> Tensor:
        """This process's share of the features of generated images ``k = 0..num_fake-1`` (image k from seed k)."""
        rank, world = _rank_world()
        seeds = list(shard_indices(num_fake, rank, world))
        out = []
        with self._bar(len(seeds), num_fake, "generating and scoring {count} images") as bar:
            for start in range(0, len(seeds), self.batch):
                z = latents_for_seeds(seeds[start : start + self.batch], z_dim, self.device)
                out.append(self.features(to_uint8(generator(z))).cpu())
                bar.update(len(z))
        return torch.cat(out) if out else torch.empty(0, FEATURE)

    # ----------------------------------------------------------------------------------------- metrics

    def evaluate(self, generator: nn.Module, z_dim: int, names: list[str], context: dict[str, Any] | None = None):
        """Results ``{name: record}`` for ``names``; every process must call this (collective).

        Each image goes through Inception at most once per call (see the module docstring); ``seconds`` in
        every record is the time of the whole call.
        """
        specs = [parse_metric(n) for n in names]
        if not specs:
            return {}
        generator = generator.eval()
        rank, world = _rank_world()
        start = time.perf_counter()
        num_reals = sorted({spec.num_real for spec in specs}, key=lambda n: n is not None)  # the full set first
        for num_real in num_reals:
            self._real_indices(num_real)  # a metric asking for too many real images fails before any work
        reals: dict[int | None, tuple[Tensor, bool]] = {}
        for num_real in num_reals:
            if None in reals:  # a subset of the full set, whose features are at hand in index order
                full, cached = reals[None]
                reals[num_real] = full[torch.from_numpy(self._real_indices(num_real))], cached
            else:
                reals[num_real] = self.real_features(num_real), self.last_cache_hit
        # image k comes from seed k, so this process's share of fewer images is a prefix of its share of the most
        fakes = self.fake_features(generator, max(spec.num_fake for spec in specs), z_dim)
        results: dict[str, dict[str, Any]] = {}
        for spec in specs:
            real, cached = reals[spec.num_real]
            my_reals = real[list(shard_indices(len(real), rank, world))]
            my_fakes = fakes[: len(shard_indices(spec.num_fake, rank, world))]
            value, std = self._compute(spec, my_reals, my_fakes, len(real))
            record = {
                "metric": spec.name,
                "value": value,
                "num_fake": spec.num_fake,
                "num_real": len(real),
                "real_set": "full" if spec.num_real is None else "spread subset",
                "feature": FEATURE,
                "dataset": self.dataset.fingerprint,
                "dataset_name": self.dataset.name,
                "weights": f"{self.weights_id} ({self.weights_source})",
                "implementation": _implementation(),
                "processes": world,
                "real_features_cached": cached,
                **(context or {}),
            }
            if std is not None:
                record["std"] = std
                record["subset_size"] = min(1000, spec.num_fake, len(real))
            results[spec.name] = record
        seconds = round(time.perf_counter() - start, 1)
        for record in results.values():
            record["seconds"] = seconds
        return results

    def _compute(self, spec: MetricSpec, my_reals: Tensor, my_fakes: Tensor, num_real: int):
        device = self.device
        if spec.kind == "fid":
            metric = make_fid(FEATURE).to(device)
            for chunk in my_reals.split(256):
                metric.update(chunk.to(device), real=True)
            for chunk in my_fakes.split(256):
                metric.update(chunk.to(device), real=False)
            return float(metric.compute()), None
        metric = make_kid(FEATURE, subset_size=min(1000, spec.num_fake, num_real)).to(device)
        metric.update(my_reals.to(device), real=True)
        metric.update(my_fakes.to(device), real=False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # the same subsets on every process and every run
            mean, std = metric.compute()
        return float(mean), float(std)
