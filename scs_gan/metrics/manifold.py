"""Improved precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et al. 2020).

All four compare a real and a generated ("fake") set of feature vectors through k-nearest-neighbour balls:
the ball of a point is centred on it, with the distance to its k-th nearest *other* point of the same set as
radius (the point itself never counts as its own neighbour; an identical copy of it does).

- precision: the fraction of fakes inside at least one real ball (are the samples realistic?);
- recall: the fraction of reals inside at least one fake ball (is the real variety produced?);
- density: ``1 / (k * N_fake) * sum over fakes of the number of real balls that contain it``;
- coverage: the fraction of reals whose ball contains at least one fake.

"Inside" means distance <= radius, as in the papers' reference code for precision and recall. With ``<``
(the density/coverage package ``prdc`` 0.2), a real whose k nearest other reals are copies of it has radius
0 and contains nothing, not even itself: a set whose images each appear more than k times scores coverage and
density 0 against itself. With ``<=``, identical sets score precision = recall = coverage = 1 and density ``1 + 1/k``
(each fake also lies in the ball of its own copy); fakes drawn independently from the real distribution score
density 1 on average.

Distances are Euclidean, computed in float64 by ``torch.cdist`` (matrix-product form) over blocks of rows,
so memory grows with one block (``rows x other set``), not with the full ``N x M`` matrix. Squared distances
are compared, with a slack of :data:`TIE_SLACK` times the largest squared feature norm: the matrix-product
form rounds to about 1e-13 of that, so ties (a point's own k-th neighbour, copies of one image) are decided
as exact arithmetic decides them, whatever the block layout. The slack is far below any distance between
distinct Inception features.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Squared distances within this fraction of the largest squared feature norm of a radius count as equal.
TIE_SLACK = 1e-9
#: Elements of one block of the distance matrix (float64: 128 MiB); the rows per block follow from it.
BLOCK_ELEMENTS = 2**24


def _rows_per_block(columns: int, block_rows: int | None) -> int:
    return block_rows or max(1, BLOCK_ELEMENTS // max(columns, 1))


def _squared_distances(x: Tensor, y: Tensor) -> Tensor:
    # the matrix-product form always (cdist's default switches forms by size, which would make a result depend
    # on the block layout); it rounds like any GEMM, which TIE_SLACK absorbs
    return torch.cdist(x, y, compute_mode="use_mm_for_euclid_dist").square_()


def _float64(features: Tensor, device: torch.device | str | None) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(features.shape)}")
    return features.to(device=device or features.device, dtype=torch.float64)


def _slack(*sets: Tensor) -> float:
    return TIE_SLACK * max(float(s.square().sum(1).max()) for s in sets)


def knn_squared_radii(
    features: Tensor, k: int, block_rows: int | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Squared distance from each point to its k-th nearest other point of the same set.

    Args:
        features: ``(N, D)``, any float dtype; the distances are computed in float64.
        k: the neighbour (1 = the nearest other point); needs ``N > k``.
        block_rows: rows of the distance matrix per block (default: :data:`BLOCK_ELEMENTS` / N).
        device: where to compute (default: the features' device).

    Returns:
        float64 ``(N,)`` on the computing device.
    """
    x = _float64(features, device)
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k-th nearest other point needs 0 < k < N, got k={k}, N={n}")
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    step = _rows_per_block(n, block_rows)
    for start in range(0, n, step):
        block = _squared_distances(x[start : start + step], x)
        rows = torch.arange(len(block), device=x.device)
        block[rows, start + rows] = torch.inf  # the point itself is not its own neighbour (a copy of it is)
        out[start : start + len(block)] = block.kthvalue(k, dim=1).values
    return out


def precision_recall(
    real: Tensor,
    fake: Tensor,
    k: int = 3,
    real_squared_radii: Tensor | None = None,
    block_rows: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` ``(N, D)`` against ``real`` ``(M, D)`` (see the module docstring).

    ``real_squared_radii`` (from :func:`knn_squared_radii` with the same ``k``) may be passed to reuse them.
    Returns ``(precision, recall)``, both in [0, 1].
    """
    real64, fake64 = _float64(real, device), _float64(fake, device)
    if real_squared_radii is None:
        real_squared_radii = knn_squared_radii(real64, k, block_rows)
    real_r2 = real_squared_radii.to(real64.device, torch.float64)
    fake_r2 = knn_squared_radii(fake64, k, block_rows)
    slack = _slack(real64, fake64)
    fake_inside = torch.zeros(len(fake64), dtype=torch.bool, device=fake64.device)
    real_inside = torch.zeros(len(real64), dtype=torch.bool, device=real64.device)
    step = _rows_per_block(len(real64), block_rows)
    for start in range(0, len(fake64), step):
        d2 = _squared_distances(fake64[start : start + step], real64)  # (fakes of the block, reals)
        fake_inside[start : start + len(d2)] = (d2 <= real_r2 + slack).any(dim=1)
        real_inside |= (d2 <= fake_r2[start : start + len(d2), None] + slack).any(dim=0)
    return float(fake_inside.double().mean()), float(real_inside.double().mean())


def density_coverage(
    real: Tensor,
    fake: Tensor,
    k: int = 5,
    real_squared_radii: Tensor | None = None,
    block_rows: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Density and coverage of ``fake`` ``(N, D)`` against ``real`` ``(M, D)`` (see the module docstring).

    ``real_squared_radii`` (from :func:`knn_squared_radii` with the same ``k``) may be passed to reuse them.
    Returns ``(density, coverage)``: density >= 0 (about 1 for samples of the real distribution), coverage in
    [0, 1].
    """
    real64, fake64 = _float64(real, device), _float64(fake, device)
    if real_squared_radii is None:
        real_squared_radii = knn_squared_radii(real64, k, block_rows)
    real_r2 = real_squared_radii.to(real64.device, torch.float64)
    slack = _slack(real64, fake64)
    balls_containing = torch.zeros((), dtype=torch.int64, device=fake64.device)
    covered = torch.zeros(len(real64), dtype=torch.bool, device=real64.device)
    step = _rows_per_block(len(real64), block_rows)
    for start in range(0, len(fake64), step):
        inside = _squared_distances(fake64[start : start + step], real64) <= real_r2 + slack
        balls_containing += inside.sum()
        covered |= inside.any(dim=0)
    return float(balls_containing) / (k * len(fake64)), float(covered.double().mean())
