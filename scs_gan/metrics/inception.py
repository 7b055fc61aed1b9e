"""Inception features exactly as torchmetrics computes them for FID/KID, fed to torchmetrics' metrics.

One Inception pass serves FID, KID and the Inception Score: the metrics are torchmetrics' own
``FrechetInceptionDistance``, ``KernelInceptionDistance`` and ``InceptionScore``, given an identity "feature
extractor" so that ``update()`` takes the features (or, for IS, the logits) computed here. The states of FID
and KID are sums and feature lists that torchmetrics reduces across processes in ``compute()``.
"""

from __future__ import annotations

import tempfile
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance


class TFInceptionV3(NoTrainInceptionV3):
    """torchmetrics' InceptionV3 with the TF-compatible resize (``antialias=False``), built from a state dict.

    torch-fidelity only takes a weights *path* and unpickles it without restriction; we hand it a private
    temporary file that we have just written from tensors we loaded safely, never a user's file.
    ``state=None`` builds the layout alone (to read its parameter names).
    """

    def __init__(self, state: dict[str, Tensor] | None, feature: int = 2048) -> None:
        self._building_without_weights = state is None
        with tempfile.TemporaryDirectory(prefix="scs_gan_fid_") as tmp:
            path = Path(tmp) / "weights.pth"
            torch.save(state or {}, path)
            super().__init__("inception-v3-compat", [str(feature)], str(path), antialias=False)
        self._building_without_weights = False

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self._building_without_weights:
            return None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _folded_forward(self: nn.Module, x: Tensor) -> Tensor:
    """A ``BasicConv2d`` (convolution, batch norm, ReLU) as one convolution with a bias, then the ReLU."""
    conv = self.conv
    y = F.conv2d(x, self.folded_weight, self.folded_bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu(y, inplace=True)


def fold_batch_norms(net: nn.Module) -> int:
    """Fold each convolution + inference batch norm of the Inception into one convolution; returns how many.

    torch-fidelity's ``BasicConv2d`` computes ``relu(bn(conv(x)))`` with fixed statistics, which is
    ``relu(conv(x, w * s) + (beta - mean * s))`` with ``s = gamma / sqrt(var + eps)``: one pass over each
    activation fewer (about 10% of the feature pass on a CPU), the same features to float rounding (a few
    1e-6). The folded tensors are non-persistent buffers, so the state dict keeps the published weights.
    """
    count = 0
    for module in net.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if type(module).__name__ != "BasicConv2d" or not isinstance(conv, nn.Conv2d) or conv.bias is not None:
            continue
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.training:
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            module.register_buffer("folded_weight", conv.weight * scale.view(-1, 1, 1, 1), persistent=False)
            module.register_buffer("folded_bias", bn.bias - bn.running_mean * scale, persistent=False)
        module.forward = types.MethodType(_folded_forward, module)
        count += 1
    return count


class InceptionFeatures(nn.Module):
    """uint8 images ``(N, 1 or 3, H, W)`` to float32 Inception features ``(N, feature)``, in batches (with the
    batch norms folded into the convolutions, see :func:`fold_batch_norms`)."""

    def __init__(self, state: dict[str, Tensor], feature: int = 2048, batch: int = 64, fold: bool = True) -> None:
        super().__init__()
        self.net = TFInceptionV3(state, feature).eval()
        self.folded = fold_batch_norms(self.net) if fold else 0
        self.feature, self.batch = feature, batch

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        device = next(self.net.parameters()).device
        outputs = [self.net(chunk.to(device)).float() for chunk in images.split(self.batch)]
        return torch.cat(outputs) if outputs else torch.empty(0, self.feature, device=device)


class PrecomputedFeatures(nn.Module):
    """The identity, posing as a feature extractor so that torchmetrics' ``update()`` takes features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def make_fid(feature: int = 2048, sync: bool = True) -> FrechetInceptionDistance:
    """torchmetrics' FID over features of size ``feature`` (fed by :class:`InceptionFeatures`).

    With ``sync`` (the default) ``compute()`` sums the states of all processes, so every process must call
    it; ``sync=False`` is for a computation local to one process.
    """
    return FrechetInceptionDistance(
        feature=PrecomputedFeatures(feature), reset_real_features=False, sync_on_compute=sync
    )


def make_kid(feature: int = 2048, subset_size: int = 1000, subsets: int = 100) -> KernelInceptionDistance:
    """torchmetrics' KID (polynomial kernel, ``subsets`` random subsets of ``subset_size``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(
            feature=PrecomputedFeatures(feature), subsets=subsets, subset_size=subset_size, reset_real_features=False
        )


def make_inception_score(num_classes: int = 1008, splits: int = 10) -> InceptionScore:
    """torchmetrics' Inception Score over ``num_classes``-way logits that ``update()`` is given, on one process.

    ``compute()`` does not reduce across processes: feed it every logit (gathered) on every process, and seed
    torch's CPU generator before it (it shuffles the images into ``splits`` groups).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return InceptionScore(feature=PrecomputedFeatures(num_classes), splits=splits, sync_on_compute=False)
