"""Shared test fixtures, and the threads of each test process when the suite runs in parallel."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N test processes side by side: each gets an equal share of the cores (torch's threads
    # in this process, OpenMP's in the processes it starts), so that N x threads never oversubscribe the CPU,
    # where OpenMP's waiting threads would slow everything by far more than N
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)


@pytest.fixture(scope="session")
def fid_weights_file(tmp_path_factory) -> str:
    """The real FID Inception weights as one safetensors file (resolved or converted once per session)."""
    from safetensors.torch import save_file

    from scs_gan.metrics.weights import resolve_fid_weights

    state, _ = resolve_fid_weights(allow_download=False)
    path = tmp_path_factory.mktemp("fid") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)
