"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fid_weights_file(tmp_path_factory) -> str:
    """The real FID Inception weights as one safetensors file (resolved or converted once per session)."""
    from safetensors.torch import save_file

    from scs_gan.metrics.weights import resolve_fid_weights

    state, _ = resolve_fid_weights(allow_download=False)
    path = tmp_path_factory.mktemp("fid") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)
