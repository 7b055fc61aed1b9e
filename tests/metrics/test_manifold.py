"""Precision/recall and density/coverage on synthetic features: direction, identities, a direct k-NN check, blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scs_gan.metrics.manifold import density_coverage, knn_squared_radii, precision_recall


def _mixture(count: int, seed: int, clusters=range(10), dim: int = 8, noise: float = 0.0) -> torch.Tensor:
    """``count`` points of a 10-cluster Gaussian mixture (fixed centres) drawn only from ``clusters``."""
    centres = torch.randn(10, dim, generator=torch.Generator().manual_seed(1234)) * 10
    gen = torch.Generator().manual_seed(seed)
    clusters = torch.tensor(list(clusters))
    which = clusters[torch.randint(len(clusters), (count,), generator=gen)]
    points = centres[which] + torch.randn(count, dim, generator=gen)
    return points + noise * torch.randn(count, dim, generator=gen)


def _direct(real: np.ndarray, fake: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """The four metrics by their definitions, with plain loops and np.linalg.norm (float64)."""

    def distance(a, b):
        return np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))

    def radii(points, k):  # distance to the k-th nearest other point
        return [sorted(distance(p, q) for j, q in enumerate(points) if j != i)[k - 1] for i, p in enumerate(points)]

    d = np.array([[distance(f, r) for r in real] for f in fake])  # (fakes, reals)
    real_r3, fake_r3, real_r5 = radii(real, k_pr), radii(fake, k_pr), radii(real, k_dc)
    precision = np.mean([any(d[i, j] <= real_r3[j] for j in range(len(real))) for i in range(len(fake))])
    recall = np.mean([any(d[i, j] <= fake_r3[i] for i in range(len(fake))) for j in range(len(real))])
    inside = [[d[i, j] <= real_r5[j] for j in range(len(real))] for i in range(len(fake))]
    density = sum(sum(row) for row in inside) / (k_dc * len(fake))
    coverage = np.mean([any(inside[i][j] for i in range(len(fake))) for j in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def _ours(real: torch.Tensor, fake: torch.Tensor, block_rows: int | None = None) -> dict[str, float]:
    precision, recall = precision_recall(real, fake, 3, block_rows=block_rows)
    density, coverage = density_coverage(real, fake, 5, block_rows=block_rows)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_dropping_modes_lowers_recall_and_adding_noise_lowers_precision():
    real = _mixture(1000, seed=0)
    faithful = _ours(real, _mixture(1000, seed=1))
    half_the_modes = _ours(real, _mixture(1000, seed=1, clusters=range(5)))
    noisy = _ours(real, _mixture(1000, seed=1, noise=1.5))
    assert faithful["precision"] > 0.8 and faithful["recall"] > 0.8 and faithful["coverage"] > 0.9
    # the missing modes: recall and coverage halve, precision stays where a faithful sample has it
    assert half_the_modes["precision"] == pytest.approx(faithful["precision"], abs=0.03)
    assert half_the_modes["recall"] < 0.55 * faithful["recall"] and half_the_modes["coverage"] < 0.55
    # samples off the real manifold: precision and density fall, recall does not
    assert noisy["precision"] < 0.3 * faithful["precision"] and noisy["density"] < 0.2
    assert noisy["recall"] >= faithful["recall"]


def test_identical_sets_score_one_also_with_repeated_points():
    distinct = _mixture(300, seed=0)
    assert _ours(distinct, distinct.clone()) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "density": 1.2, "coverage": 1.0}  # density 1 + 1/k: see manifold.py
    )
    repeated = distinct[:50].repeat_interleave(6, dim=0)  # 6 copies: every k-NN radius (k <= 5) is 0
    ours = _ours(repeated, repeated.clone())
    assert ours["precision"] == ours["recall"] == ours["coverage"] == 1.0
    assert ours["density"] == pytest.approx(6 / 5)  # each point lies in the 6 balls of its copies


def test_independent_samples_of_the_real_distribution_have_density_about_one():
    real = _mixture(2000, seed=0)
    assert _ours(real, _mixture(2000, seed=1))["density"] == pytest.approx(1.0, abs=0.08)


@pytest.mark.parametrize(
    "case",
    ["mixture", "noisy", "identical", "repeated"],
)
def test_values_match_a_direct_knn_computation(case):
    real = _mixture(120, seed=0, dim=16)
    fake = {
        "mixture": _mixture(100, seed=1, dim=16, clusters=range(6)),
        "noisy": _mixture(100, seed=1, dim=16, noise=1.0),
        "identical": real.clone(),
        "repeated": real[:40].repeat_interleave(3, dim=0),  # ties: fakes on top of reals and of each other
    }[case]
    if case == "repeated":
        real = torch.cat([real[:60], real[:40]])
    expected = _direct(real.double().numpy(), fake.double().numpy())
    assert _ours(real, fake) == pytest.approx(expected, abs=1e-6)


def test_block_layout_does_not_change_results():
    real, fake = _mixture(200, seed=0), _mixture(150, seed=1, noise=0.5)
    whole = _ours(real, fake, block_rows=10**6)
    for block_rows in (1, 7, 64):
        assert _ours(real, fake, block_rows=block_rows) == whole
        radii = knn_squared_radii(real, 3, block_rows=block_rows)
        torch.testing.assert_close(radii, knn_squared_radii(real, 3, block_rows=10**6), rtol=1e-12, atol=0)
    radii = knn_squared_radii(real, 3)  # reused radii give the same answer as computed ones
    assert precision_recall(real, fake, 3, real_squared_radii=radii) == (whole["precision"], whole["recall"])


def test_radius_is_the_kth_nearest_other_point():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_squared_radii(points, 1).tolist() == [1.0, 1.0, 4.0, 16.0]
    assert knn_squared_radii(points, 3).tolist() == [49.0, 36.0, 16.0, 49.0]
    with pytest.raises(ValueError, match="0 < k < N"):
        knn_squared_radii(points, 4)
