"""The exact FID of small sets (scs_gan.metrics.frechet) against torchmetrics' and SciPy's square root."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from scs_gan.metrics.frechet import frechet_distance, low_rank
from scs_gan.metrics.inception import make_fid


def _features(n: int, d: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Non-negative features of low intrinsic rank plus noise, like Inception pool features."""
    basis = torch.randn(16, d, generator=generator)
    signal = (scale * torch.randn(n, 16, generator=generator) @ basis).relu()
    return signal + 0.1 * torch.rand(n, d, generator=generator)


def _scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The reference implementations' formula: SciPy's matrix square root of the covariances' product."""
    a64, b64 = a.double().numpy(), b.double().numpy()
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.square(a64.mean(0) - b64.mean(0)).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


# both sets smaller than the feature size, one smaller (either side), both larger (the full eigenproblem)
@pytest.mark.parametrize("sizes", [(10, 10), (30, 12), (12, 30), (40, 100), (100, 40), (80, 120)])
def test_every_route_gives_torchmetrics_and_scipy_values(sizes):
    d = 64
    generator = torch.Generator().manual_seed(sum(sizes))
    a, b = _features(sizes[0], d, 1.0, generator), _features(sizes[1], d, 1.3, generator)
    fid = make_fid(d, sync=False)
    fid.update(a, real=True)
    fid.update(b, real=False)
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(float(fid.compute()), rel=1e-5)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-6)
    assert ours == pytest.approx(frechet_distance(b, a), rel=1e-12)  # symmetric
    assert low_rank(*sizes, d) == (min(sizes) < d)


def test_a_set_against_itself_is_zero_where_the_eigendecomposition_leaves_rounding():
    generator = torch.Generator().manual_seed(0)
    a = _features(24, 2048, 1.0, generator)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 0.05) == pytest.approx(2048 * 0.05**2, rel=1e-6)  # a shift moves only the means


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))


def test_the_scoring_benchmark_times_both_computations_of_the_same_values(capfd):
    from scs_gan.metrics.bench import score_lines

    fid_line, kid_line = score_lines(count=40, feature=64)
    assert "timing FID and KID both ways" in capfd.readouterr().err  # its bar
    assert fid_line.startswith("FID of 40 vs 40 features: torchmetrics") and "exact low-rank" in fid_line
    fid_values = [float(v) for v in fid_line.split("values ")[1].split(" and ")]
    kid_values = [float(v) for v in kid_line.split("values ")[1].split(" and ")]
    assert fid_values[0] == pytest.approx(fid_values[1], rel=1e-4)
    assert kid_values[0] == pytest.approx(kid_values[1], rel=1e-4)
