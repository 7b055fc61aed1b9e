"""Metrics of a generator against a dataset, under one named protocol, on one process or many.

Protocol names carry what they measure: ``fid2k_full`` is FID between 2,000 images generated from seeds
0..1999 by the (EMA) generator and the full real set; ``kid1k_1k`` is KID between 1,000 generated and a
fixed, evenly spread subset of 1,000 real images; ``pr1k_1k`` and ``dc1k_1k`` are improved precision/recall
(k = 3) and density/coverage (k = 5) on the same features (``scs_gan.metrics.manifold``); ``is50k`` is the
Inception Score of 50,000 generated images, which needs weights with the Inception's logits. FID is biased by
the sample size: compare numbers only under the same name. Generated image ``k`` always comes from seed
``k``, so the result does not depend on the batch size or the number of processes (up to float summation
order).

Real-image features are computed once and cached on disk, keyed by everything that changes them (dataset
fingerprint, which images, feature size, Inception weights, protocol version) and written atomically; the
k-NN radii of a real set are cached beside its features (same key, plus k). Within one call every image goes
through Inception at most once: the metrics of one call share the generated images (the largest N serves
the smaller ones) and the real ones (the full set serves its subsets). The main process shows a progress bar
for each pass, unless ``progress=False``.

With ``floors=True`` each ``fid<N>_<M>``/``kid<N>_<M>`` record also holds its floor: the same metric between
the M reference reals and N other real images, disjoint from them (what a generator that reproduces the
data distribution would score under this protocol). Floors are cached by value (dataset fingerprint, N, M,
weights); ``_full`` protocols, and datasets with fewer than N + M images, have none, and the record says why.

KID, and FID where both sets have at least 2,048 images, feed each process's share to torchmetrics, whose
``compute()`` reduces over processes. FID with fewer images on a side (``fid1k_1k``, ``fid2k_full``: the
usual protocols) is computed exactly by ``scs_gan.metrics.frechet`` without torchmetrics' 2048 x 2048
eigendecomposition; it, precision/recall, density/coverage and IS are computed on features gathered in index
order, identically on every process. KID whose subsets are both whole sets computes its one distinct subset
once, not 100 times.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
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
from ..io import atomic_write, atomic_write_text, cache_dir
from ..latents import latents_for_seeds
from .frechet import frechet_distance, low_rank
from .manifold import density_coverage, knn_squared_radii, precision_recall
from .protocol import MetricSpec, parse_metric
from .weights import weights_id

# `.inception` (and with it torchmetrics, which takes seconds to import) is imported inside the functions that
# use it, so that training without metrics, generation and the other commands start faster

PROTOCOL_VERSION = 1
FEATURE = 2048
#: torchmetrics' and torch-fidelity's Inception Score setting: the images are shuffled into 10 groups.
IS_SPLITS = 10


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


def _implementation(kind: str, exact_fid: bool = False) -> str:
    versions = {name: importlib.metadata.version(name) for name in ("torchmetrics", "torch-fidelity")}
    network = (
        f"torch-fidelity {versions['torch-fidelity']} InceptionV3 (TF 2015-12-05 graph), TF-compatible bilinear "
        "resize to 299 (antialias=False), uint8 inputs, grayscale repeated to RGB"
    )
    knn = "float64 Euclidean distances by torch.cdist in row blocks, radius = distance to the k-th nearest other"
    if kind == "fid" and exact_fid:
        return (
            "scs_gan.metrics.frechet.frechet_distance (float64; the trace of the square root of the covariances' "
            "product as the sum of the singular values of the centred cross-feature matrix, equal to torchmetrics "
            f"{versions['torchmetrics']} FrechetInceptionDistance up to its rounding) on {network}"
        )
    if kind in ("fid", "kid"):
        return f"torchmetrics {versions['torchmetrics']} FrechetInceptionDistance/KernelInceptionDistance on {network}"
    if kind == "pr":
        return (
            f"scs_gan.metrics.manifold.precision_recall (Kynkaanniemi et al. 2019; {knn} point of the same set, "
            f"inside = distance <= radius) on the 2048-d pool features of {network}"
        )
    if kind == "dc":
        return (
            f"scs_gan.metrics.manifold.density_coverage (Naeem et al. 2020; {knn} real, inside = distance <= "
            f"radius) on the 2048-d pool features of {network}"
        )
    return (
        f"torchmetrics {versions['torchmetrics']} InceptionScore ({IS_SPLITS} splits, shuffled with seed 0) on the "
        f"1008-way logits_unbiased (pool features times fc.weight, no bias, as torch-fidelity) of {network}"
    )


def _logits_weight(state: dict[str, Tensor]) -> Tensor | None:
    """The Inception's logits layer (``fc.weight``), or None where the weights have none (zeros: our conversion)."""
    weight = state.get("fc.weight")
    return weight if weight is not None and bool(torch.count_nonzero(weight)) else None


def describe(record: dict[str, Any]) -> str:
    """One line for a result record, with its second value and its floor where it has them.

    For example ``fid1k_1k 33.4012 (real-vs-real floor 12.3456)``, ``kid1k_1k 0.0152 +- 0.00100``,
    ``pr1k_1k precision 0.6100 recall 0.2100 (k=3)``, ``dc1k_1k density 0.5200 coverage 0.2800 (k=5)``.
    """
    name = record["metric"]
    pairs = [("precision", "recall"), ("density", "coverage")]
    pair = next((p for p in pairs if p[0] in record), None)
    if pair:
        text = f"{name} {pair[0]} {record[pair[0]]:.4f} {pair[1]} {record[pair[1]]:.4f} (k={record['k']})"
    else:
        std = record.get("std")
        text = f"{name} {record['value']:.4f}" + (f" +- {std:.5f}" if std is not None else "")
    floor = record.get("floor")
    if floor is not None and floor["value"] is None:
        text += f" (no floor: {floor['reason']})"
    elif floor is not None:
        std = floor.get("std")
        text += f" (real-vs-real floor {floor['value']:.4f}" + (f" +- {std:.5f})" if std is not None else ")")
    return text


def kid_subset(num_fake: int, num_real: int) -> tuple[int, bool]:
    """KID's subset size for these set sizes, and whether its subsets differ: subsets as large as both sets
    are both whole sets every time, and their spread is rounding, not a spread (the records leave it out)."""
    size = min(1000, num_fake, num_real)
    return size, size < max(num_fake, num_real)


class Evaluator:
    """Computes named metrics for generators against one dataset; reuses the Inception network and caches.

    With ``progress`` (the default) the main process shows a bar with rate and ETA for each Inception pass on
    stderr, and says when real features come from the cache; ``progress=False`` is silent. With ``floors``,
    FID and KID records against a real subset carry their real-vs-real floor (see the module docstring).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        state: dict[str, Tensor],
        weights_source: str,
        device: torch.device | str = "cpu",
        batch: int = 0,
        progress: bool = True,
        floors: bool = False,
    ) -> None:
        from . import inception

        self.dataset, self.device, self.progress, self.floors = dataset, torch.device(device), progress, floors
        self.batch = batch or (8 if self.device.type == "cpu" else 128)
        self.weights_source, self.weights_id = weights_source, weights_id(state)
        self.logits_weight = _logits_weight(state)
        self.features = inception.InceptionFeatures(state, FEATURE, batch=self.batch).to(self.device)
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

    # ------------------------------------------------------------------------------------------ cache

    def _cache_path(self, prefix: str, suffix: str, *parts: Any) -> Path:
        """A cache file named by a hash of the dataset fingerprint, ``parts``, the feature size and the weights."""
        fields = [f"v{PROTOCOL_VERSION}", self.dataset.fingerprint, *parts, FEATURE, self.weights_id]
        key = hashlib.sha256(":".join(str(f) for f in fields).encode()).hexdigest()[:24]
        return cache_dir("fid") / f"{prefix}-{self.dataset.name}-{key}{suffix}"

    def _load_cached(self, path: Path, name: str, count: int) -> Tensor | None:
        """Tensor ``name`` of a cache file if it is readable and has ``count`` rows; None otherwise (recompute)."""
        if not path.is_file():
            return None
        try:
            cached = load_file(str(path))[name]
        except (SafetensorError, OSError, KeyError):
            return None  # damaged: recompute
        return cached if len(cached) == count else None

    def _save_cached(self, path: Path, name: str, tensor: Tensor) -> None:
        """Written once (main process, atomically); every process waits for it (collective)."""
        rank, world = _rank_world()
        if rank == 0:
            atomic_write(path, lambda tmp: save_file({name: tensor.contiguous()}, str(tmp)))
        if world > 1:
            dist.barrier()

    def _all_agree(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (collective)."""
        if _rank_world()[1] == 1:
            return flag
        flags = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        return bool(flags.item())

    # ------------------------------------------------------------------------------------------ reals

    def _real_indices(self, num_real: int | None):
        count = len(self.dataset)
        if num_real is not None and num_real > count:
            raise UserError(f"a metric asks for {num_real} real images but dataset {self.dataset.name} has {count}")
        return spread_subset(count, num_real)

    def _real_path(self, num_real: int | None) -> Path:
        return self._cache_path("reals", ".safetensors", len(self._real_indices(num_real)), num_real)

    def _inception_of(self, indices: np.ndarray, what: str) -> Tensor:
        """Features of the dataset images ``indices``, computed sharded over the processes, gathered in order."""
        rank, world = _rank_world()
        mine = [int(indices[i]) for i in shard_indices(len(indices), rank, world)]
        local = []
        with self._bar(len(mine), len(indices), what) as bar:
            for start in range(0, len(mine), self.batch):
                images = torch.stack([self.dataset[i] for i in mine[start : start + self.batch]])
                local.append(self.features(images).cpu())
                bar.update(len(images))
        local_t = torch.cat(local) if local else torch.empty(0, FEATURE)
        return _gather_in_order(local_t, len(indices), self.device)

    def real_features(self, num_real: int | None) -> Tensor:
        """Features of the real images of a protocol: from the cache, or computed (sharded) and cached."""
        indices = self._real_indices(num_real)
        path = self._real_path(num_real)
        cached = self._load_cached(path, "features", len(indices))
        self.last_cache_hit = cached is not None
        if cached is not None:
            self._say(f"real features: cache hit ({len(cached):,} images, {path})")
            return cached
        features = self._inception_of(indices, "Inception features of {count} real images (cached for later runs)")
        self._save_cached(path, "features", features)
        return features

    def real_squared_radii(self, num_real: int | None, real: Tensor, k: int) -> tuple[Tensor, bool]:
        """Squared k-NN radii of a protocol's real set (features ``real``), and whether they came from the cache.

        Cached beside the real features, under their key plus ``k``; computed on every process alike.
        """
        path = self._cache_path("knn", f"-k{k}.safetensors", len(real), num_real)  # the real features' key, + k
        cached = self._load_cached(path, "squared_radii", len(real))
        if not self._all_agree(cached is not None):  # a process may see the file the main one has just written
            cached = None
        if cached is not None:
            self._say(f"real {k}-NN radii: cache hit ({len(cached):,} images, {path})")
            return cached, True
        radii = knn_squared_radii(real, k, device=self.device).cpu()
        self._save_cached(path, "squared_radii", radii)
        return radii, False

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

    # ----------------------------------------------------------------------------------------- floors

    def _floor_indices(self, spec: MetricSpec) -> tuple[np.ndarray | None, str]:
        """The other real images of a floor (disjoint from the reference set) and what they are; or None and why."""
        count = len(self.dataset)
        if spec.num_real is None:
            return None, f"{spec.name} compares with every real image, so no disjoint real set is left"
        reference = self._real_indices(spec.num_real)
        others = np.setdiff1d(np.arange(count), reference)
        if len(others) < spec.num_fake:
            return None, (
                f"it needs {spec.num_real:,} + {spec.num_fake:,} real images and dataset {self.dataset.name} has "
                f"{count:,}"
            )
        about = (
            f"{spec.num_fake:,} real images spread over the {len(others):,} outside the reference set, against the "
            f"same {len(reference):,} reference images"
        )
        return others[spread_subset(len(others), spec.num_fake)], about

    def _floors(
        self, specs: list[MetricSpec], reals: dict[int | None, tuple[Tensor, bool]]
    ) -> dict[str, dict[str, Any]]:
        """The floor of each FID/KID metric: from the cache, or computed (collective) and cached by value."""
        rank, world = _rank_world()
        floors: dict[str, dict[str, Any]] = {}
        todo = []
        for spec in specs:
            if spec.kind not in ("fid", "kid"):
                continue
            indices, about = self._floor_indices(spec)
            if indices is None:
                floors[spec.name] = {"value": None, "reason": about}
                continue
            # exact FID floors are cached apart from the earlier ones by torchmetrics' eigendecomposition
            method = f"{spec.kind}-exact" if self._exact_fid(spec, reals) else spec.kind
            path = self._cache_path("floor", ".json", method, spec.num_fake, spec.num_real)
            # every process looks before any computes: the main one writes only after the collective computations
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                floor = {"value": float(cached["value"])}
                # a spread is kept only where KID's subsets differ (files cached before that rule carry one)
                if "std" in cached and kid_subset(spec.num_fake, spec.num_real)[1]:
                    floor["std"] = float(cached["std"])
                floors[spec.name] = {**floor, "subset": about, "cached": True}
                self._say(f"floor of {spec.name}: cache hit ({path})")
            except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: compute
                todo.append((spec, indices, about, path))
        if not todo:
            return floors
        needed = np.unique(np.concatenate([indices for _, indices, _, _ in todo]))
        if None in reals:  # the full set's features are at hand, in index order
            pool, positions = reals[None][0], lambda indices: indices
        else:
            what = "Inception features of {count} other real images (for the floors)"
            pool, positions = self._inception_of(needed, what), lambda indices: np.searchsorted(needed, indices)
        for spec, indices, about, path in todo:
            reference = reals[spec.num_real][0]
            other = pool[torch.from_numpy(positions(indices))]
            value, std = self._compute(spec, reference, other)
            floor = {"value": value} if std is None else {"value": value, "std": std}
            if rank == 0:
                atomic_write_text(path, json.dumps(floor))
            floors[spec.name] = {**floor, "subset": about, "cached": False}
        if world > 1:
            dist.barrier()
        return floors

    # ----------------------------------------------------------------------------------------- metrics

    def check(self, names: list[str]) -> list[MetricSpec]:
        """The parsed ``names``; raises the UserError that ``evaluate`` would raise before any work.

        Too many real images for the dataset, or the Inception Score with weights that have no logits layer.
        """
        specs = [parse_metric(n) for n in names]
        for spec in specs:
            if spec.needs_reals:
                count = len(self._real_indices(spec.num_real))  # a metric asking for too many real images fails here
                if spec.k is not None and count <= spec.k:
                    raise UserError(f"metric {spec.name} needs more than {spec.k} real images, the dataset has {count}")
            elif self.logits_weight is None:
                raise UserError(
                    f"{spec.name} needs the Inception's 1008-way logits, but the FID weights in use "
                    f"({self.weights_source}) end at the 2048-d pool features (their logits layer is zero), so pass "
                    "torch-fidelity's full TF-Inception file weights-inception-2015-12-05-6726825d.pth as "
                    "--fid-weights or metrics.fid_weights, or leave the Inception Score out"
                )
        return specs

    def evaluate(self, generator: nn.Module, z_dim: int, names: list[str], context: dict[str, Any] | None = None):
        """Results ``{name: record}`` for ``names``; every process must call this (collective).

        Each image goes through Inception at most once per call (see the module docstring); ``seconds`` in
        every record is the time of the whole call. ``value`` is the metric (for ``pr`` the precision, for ``dc``
        the density; their records also hold ``recall``/``coverage``); :func:`describe` prints a record.
        """
        specs = self.check(names)
        if not specs:
            return {}
        generator = generator.eval()
        rank, world = _rank_world()
        start = time.perf_counter()
        num_reals = sorted({s.num_real for s in specs if s.needs_reals}, key=lambda n: n is not None)  # full first
        reals: dict[int | None, tuple[Tensor, bool]] = {}
        for num_real in num_reals:
            if None in reals:  # a subset of the full set, whose features are at hand in index order
                full, cached = reals[None]
                reals[num_real] = full[torch.from_numpy(self._real_indices(num_real))], cached
            else:
                reals[num_real] = self.real_features(num_real), self.last_cache_hit
        # image k comes from seed k, so this process's share of fewer images is a prefix of its share of the most
        num_fake = max(spec.num_fake for spec in specs)
        fakes = self.fake_features(generator, num_fake, z_dim)
        # the k-NN metrics and IS see every generated image, in seed order, on every process
        # ... and so does FID computed exactly (see _compute)
        gathered = None
        if any(spec.kind in ("pr", "dc", "is") or self._exact_fid(spec, reals) for spec in specs):
            gathered = _gather_in_order(fakes, num_fake, self.device)
        floors = self._floors(specs, reals) if self.floors else {}
        results: dict[str, dict[str, Any]] = {}
        for spec in specs:
            record: dict[str, Any] = {"metric": spec.name, "value": None, "num_fake": spec.num_fake}
            if spec.kind == "is":
                value, std = self._inception_score(gathered[: spec.num_fake])
                record.update(value=value, std=std, splits=IS_SPLITS, feature=self.logits_weight.shape[0])
            else:
                real, cached = reals[spec.num_real]
                record.update(
                    num_real=len(real),
                    real_set="full" if spec.num_real is None else "spread subset",
                    feature=FEATURE,
                )
                if spec.kind in ("fid", "kid"):
                    if self._exact_fid(spec, reals):
                        value, std = self._compute(spec, real, gathered[: spec.num_fake])
                    else:
                        my_fakes = fakes[: len(shard_indices(spec.num_fake, rank, world))]
                        value, std = self._compute(spec, real, my_fakes, fake_is_shard=True)
                    record["value"] = value
                    if spec.kind == "kid":
                        record["subset_size"] = kid_subset(spec.num_fake, len(real))[0]
                    if std is not None:
                        record["std"] = std
                else:
                    record.update(self._knn_metric(spec, real, gathered[: spec.num_fake]))
                if spec.name in floors:
                    record["floor"] = floors[spec.name]
                record["real_features_cached"] = cached
            record.update(
                dataset=self.dataset.fingerprint,
                dataset_name=self.dataset.name,
                weights=f"{self.weights_id} ({self.weights_source})",
                implementation=_implementation(spec.kind, self._exact_fid(spec, reals)),
                processes=world,
            )
            results[spec.name] = {**record, **(context or {})}
        seconds = round(time.perf_counter() - start, 1)
        for record in results.values():
            record["seconds"] = seconds
        return results

    def _knn_metric(self, spec: MetricSpec, real: Tensor, fake: Tensor) -> dict[str, Any]:
        """Precision/recall or density/coverage of ``fake`` against ``real`` (all of both), as record fields."""
        radii, cached = self.real_squared_radii(spec.num_real, real, spec.k)
        compute, names = {
            "pr": (precision_recall, ("precision", "recall")),
            "dc": (density_coverage, ("density", "coverage")),
        }[spec.kind]
        first, second = compute(real, fake, spec.k, real_squared_radii=radii, device=self.device)
        return {"value": first, names[0]: first, names[1]: second, "k": spec.k, "real_radii_cached": cached}

    def _inception_score(self, fakes: Tensor) -> tuple[float, float]:
        """Mean and std over splits of the Inception Score of the features ``fakes`` (all of them)."""
        from . import inception

        device = self.device
        weight = self.logits_weight.to(device)
        metric = inception.make_inception_score(len(weight), IS_SPLITS).to(device)
        for chunk in fakes.split(256):
            metric.update(chunk.to(device) @ weight.T)  # torch-fidelity's logits_unbiased: the fc layer, no bias
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # the same shuffle on every process and every run
            mean, std = metric.compute()
        return float(mean), float(std)

    @staticmethod
    def _exact_fid(spec: MetricSpec, reals: dict[int | None, tuple[Tensor, bool]]) -> bool:
        """Whether ``spec`` is an FID that :func:`frechet_distance` computes without a 2048 x 2048 eigenproblem."""
        return spec.kind == "fid" and low_rank(len(reals[spec.num_real][0]), spec.num_fake, FEATURE)

    def _compute(
        self, spec: MetricSpec, real: Tensor, fake: Tensor, fake_is_shard: bool = False
    ) -> tuple[float, float | None]:
        """FID or KID (value, spread or None) of generated features ``fake`` against ``real`` (collective).

        ``real`` is the whole set, in index order; so is ``fake`` unless ``fake_is_shard``, where it is this
        process's share (:func:`shard_indices`). FID with fewer images than features on a side is
        :func:`frechet_distance` of the whole sets (``fake`` must then be whole), computed alike on every
        process; otherwise each process feeds its share to torchmetrics, which reduces them.
        """
        from . import inception

        device = self.device
        rank, world = _rank_world()
        num_fake = spec.num_fake if fake_is_shard else len(fake)
        if spec.kind == "fid" and low_rank(len(real), num_fake, FEATURE):
            if fake_is_shard and world > 1:
                raise ValueError("the exact FID needs every generated image's features, not one process's share")
            return frechet_distance(real, fake), None
        my_reals = real[list(shard_indices(len(real), rank, world))]
        my_fakes = fake if fake_is_shard else fake[list(shard_indices(len(fake), rank, world))]
        if spec.kind == "fid":
            metric = inception.make_fid(FEATURE).to(device)
            for chunk in my_reals.split(256):
                metric.update(chunk.to(device), real=True)
            for chunk in my_fakes.split(256):
                metric.update(chunk.to(device), real=False)
            return float(metric.compute()), None
        subset, subsets_differ = kid_subset(num_fake, len(real))
        # subsets as large as both sets are both whole sets every time: one is the value of all 100
        metric = inception.make_kid(FEATURE, subset_size=subset, subsets=100 if subsets_differ else 1).to(device)
        metric.update(my_reals.to(device), real=True)
        metric.update(my_fakes.to(device), real=False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # the same subsets on every process and every run
            mean, std = metric.compute()
        return float(mean), (float(std) if subsets_differ else None)
