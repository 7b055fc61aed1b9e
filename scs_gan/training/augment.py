"""Differentiable augmentation for the discriminator (DiffAugment policies, applied with ADA's probability ``p``).

With few real images D memorises them and G's signal degrades. The remedy (Zhao et al. 2020, DiffAugment;
Karras et al. 2020, ADA) is to augment every image D sees, reals and fakes alike, with operations that are
differentiable with respect to the images, so that G is trained through the augmentation::

    logits_real = D(augment(reals, policy, p, generator))
    logits_fake = D(augment(G(z), policy, p, generator))

What ``p`` means: each policy in ``policy`` is applied to each image independently with probability ``p``
(otherwise that image passes through that policy unchanged). ``p = 1`` is classic DiffAugment; ``p < 1`` is
ADA's augmentation strength. With ``p < 1`` the augmented distribution is a mixture that still contains the
unaugmented images, so D cannot be fooled by a G that produces augmented-looking images: augmentations that
are not invertible in distribution (cutout squares, black borders) do not leak into samples, which they can
at ``p = 1``. :class:`AdaptiveStrength` moves ``p`` during training by ADA's overfitting heuristic.

The policies (images in ``[-1, 1]``, ``N`` images of ``H x W`` pixels):

- ``translation``: shift by ``(dy, dx)`` whole pixels, each drawn uniformly from ``{-s, ..., s}`` with
  ``s = round(size * shift)`` (half rounds up) per axis, ``shift`` 1/8 unless given (DiffAugment's ratio),
  filling with zeros; content at ``(y, x)`` moves to
  ``(y + dy, x + dx)``. Implemented with ``gather`` so gradients flow to the input.
- ``cutout``: set to zero a rectangle of half the size, ``round(H / 2) x round(W / 2)`` (half rounds up), at
  a uniformly drawn position; it may hang over the border by up to half its size, as in DiffAugment.
- ``color``: brightness ``x + b`` with ``b ~ U[-0.5, 0.5)``, saturation ``(x - mean_c x) * s + mean_c x``
  with ``s ~ U[0, 2)`` (mean over channels), contrast ``(x - mean x) * c + mean x`` with ``c ~ U[0.5, 1.5)``
  (mean over channels and pixels), in that order, without clipping. Saturation only means something for
  colour images: a 1-channel image gets brightness and contrast only.

Every operation is linear in the images (``where``, ``gather``, means and affine maps), hence twice
differentiable: R1 computed on augmented reals with ``create_graph=True`` works.

Randomness: all draws come from ``generator`` (a ``torch.Generator`` on the images' device; the global RNG of
that device when ``None``), always in float32 (so float32 and bfloat16 images get the same draws), in a fixed
order: for each policy, in the order given, first one uniform number per image (the image is augmented when
it is below ``p``), then that policy's parameters:

- translation: ``randint(-s_h, s_h + 1, (N,))`` for ``dy``, then ``randint(-s_w, s_w + 1, (N,))`` for ``dx``;
- cutout: ``randint(0, H + 1 - h % 2, (N,))`` then ``randint(0, W + 1 - w % 2, (N,))`` for the square's
  centre row and column (``h x w`` the square; its top-left corner is ``centre - size // 2``);
- color: ``rand(N)`` three times, for brightness, saturation and contrast (saturation is drawn for 1-channel
  images too, so the stream does not depend on the channel count).

How many numbers are drawn therefore depends on ``N``, ``H``, ``W`` and the policy only, not on ``p``, except
that ``p = 0`` returns the images at once without drawing anything. The same generator state gives identical
augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "POLICIES",
    "AdaptiveStrength",
    "adjust_color",
    "augment",
    "cutout",
    "translate",
    "validate_policy",
]


def _half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up (DiffAugment's ``int(x + 0.5)``; ``round`` rounds to even)."""
    return math.floor(x + 0.5)


def translate(images: Tensor, shifts: Tensor) -> Tensor:
    """Shift each image by whole pixels, filling with zeros: ``out[n, :, y, x] = images[n, :, y - dy_n, x - dx_n]``.

    Args:
        images: the images.
        shifts: ``(dy, dx)`` per image, integers; positive moves content down and right.

    Shape:
        - images: ``(N, C, H, W)``; shifts: ``(N, 2)``, an integer dtype, on the images' device.
        - Output: ``(N, C, H, W)``, the images' dtype.
    """
    n, c, h, w = images.shape
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    src_y = rows.unsqueeze(0) - shifts[:, 0:1]  # (N, H)
    src_x = cols.unsqueeze(0) - shifts[:, 1:2]  # (N, W)
    inside = ((src_y >= 0) & (src_y < h)).unsqueeze(2) & ((src_x >= 0) & (src_x < w)).unsqueeze(1)  # (N, H, W)
    # Out-of-range sources read any valid pixel; `where` below replaces them with zeros.
    index = src_y.clamp(0, h - 1).unsqueeze(2) * w + src_x.clamp(0, w - 1).unsqueeze(1)
    index = index.reshape(n, 1, h * w).expand(n, c, h * w)
    moved = images.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return torch.where(inside.unsqueeze(1), moved, 0.0)


def cutout(images: Tensor, top_left: Tensor, size: tuple[int, int]) -> Tensor:
    """Set a ``size`` rectangle of each image to zero; parts of it outside the image are ignored.

    Args:
        images: the images.
        top_left: ``(row, column)`` of each rectangle's top-left corner, integers, may be negative.
        size: ``(height, width)`` of the rectangle in pixels.

    Shape:
        - images: ``(N, C, H, W)``; top_left: ``(N, 2)``, an integer dtype, on the images' device.
        - Output: ``(N, C, H, W)``, the images' dtype.
    """
    _, _, h, w = images.shape
    rows = torch.arange(h, device=images.device).unsqueeze(0) - top_left[:, 0:1]  # (N, H)
    cols = torch.arange(w, device=images.device).unsqueeze(0) - top_left[:, 1:2]  # (N, W)
    in_rows = (rows >= 0) & (rows < size[0])
    in_cols = (cols >= 0) & (cols < size[1])
    erased = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # (N, H, W)
    return torch.where(erased.unsqueeze(1), 0.0, images)


def adjust_color(images: Tensor, brightness: Tensor, saturation: Tensor, contrast: Tensor) -> Tensor:
    """DiffAugment's colour transform: brightness, then saturation (more than one channel only), then contrast.

    ``x + b``, then ``(x - mean_c x) * s + mean_c x`` (mean over channels), then ``(x - mean x) * c + mean x``
    (mean over channels and pixels of each image). ``b = 0``, ``s = 1``, ``c = 1`` is the identity up to
    rounding. No clipping: the result may leave ``[-1, 1]``.

    Shape:
        - images: ``(N, C, H, W)``; brightness, saturation, contrast: ``(N,)`` on the images' device.
        - Output: ``(N, C, H, W)``, the images' dtype.
    """
    as_factor = {"dtype": images.dtype, "device": images.device}
    x = images + brightness.to(**as_factor).view(-1, 1, 1, 1)
    if x.shape[1] > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * saturation.to(**as_factor).view(-1, 1, 1, 1) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.to(**as_factor).view(-1, 1, 1, 1) + mean


def _uniform(n: int, images: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, device=images.device)


def _randint(low: int, high: int, n: int, images: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randint(low, high, (n,), generator=generator, device=images.device)


def _random_translation(images: Tensor, generator: torch.Generator | None, shift: float) -> Tensor:
    n, _, h, w = images.shape
    s_h, s_w = _half_up(h * shift), _half_up(w * shift)
    dy = _randint(-s_h, s_h + 1, n, images, generator)
    dx = _randint(-s_w, s_w + 1, n, images, generator)
    return translate(images, torch.stack([dy, dx], dim=1))


def _random_cutout(images: Tensor, generator: torch.Generator | None, shift: float) -> Tensor:
    del shift  # translation's only
    n, _, h, w = images.shape
    size = (_half_up(h / 2), _half_up(w / 2))
    # Centres range so that the square hangs over each border by up to half its size, symmetrically.
    cy = _randint(0, h + 1 - size[0] % 2, n, images, generator)
    cx = _randint(0, w + 1 - size[1] % 2, n, images, generator)
    top_left = torch.stack([cy - size[0] // 2, cx - size[1] // 2], dim=1)
    return cutout(images, top_left, size)


def _random_color(images: Tensor, generator: torch.Generator | None, shift: float) -> Tensor:
    del shift  # translation's only
    n = images.shape[0]
    brightness = _uniform(n, images, generator) - 0.5
    saturation = _uniform(n, images, generator) * 2.0
    contrast = _uniform(n, images, generator) + 0.5
    return adjust_color(images, brightness, saturation, contrast)


_RANDOM_POLICIES: dict[str, Callable[[Tensor, torch.Generator | None, float], Tensor]] = {
    "translation": _random_translation,
    "cutout": _random_cutout,
    "color": _random_color,
}

POLICIES: tuple[str, ...] = tuple(_RANDOM_POLICIES)
"""The valid policy names."""


def validate_policy(policy: Sequence[str]) -> tuple[str, ...]:
    """The policy as a tuple, or ``ValueError`` naming the valid policies (for the config layer to report).

    A policy is a sequence of distinct names from :data:`POLICIES`, applied in the given order (DiffAugment
    uses ``["color", "translation", "cutout"]``); it may be empty (no augmentation).
    """
    valid = ", ".join(POLICIES)
    if isinstance(policy, str):
        raise ValueError(
            f"augmentation policy {policy!r} must be a list of names such as ['translation'] (from: {valid})"
        )
    names = tuple(policy)
    unknown = [name for name in names if name not in _RANDOM_POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation policy {', '.join(map(repr, unknown))}; valid policies: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"augmentation policy {list(names)} names a policy twice; give each at most once")
    return names


def augment(
    images: Tensor,
    policy: Sequence[str],
    p: float,
    generator: torch.Generator | None = None,
    shift: float = 1 / 8,
) -> Tensor:
    """Apply each policy in ``policy`` (in order) to each image independently with probability ``p``.

    Differentiable, twice, with respect to ``images``. See the module docstring for the policies' maths and the
    exact order of the random draws.

    Args:
        images: images in ``[-1, 1]``, float32 or bfloat16 (any floating dtype works).
        policy: names from :data:`POLICIES`, e.g. ``["translation", "cutout"]``.
        p: probability in ``[0, 1]`` that a policy is applied to an image (1 = DiffAugment, < 1 = ADA strength).
            ``p = 0`` returns ``images`` itself and draws nothing.
        generator: source of all random draws, on the images' device; ``None`` uses the global RNG.
        shift: ``translation``'s largest shift as a fraction of the image's height and width, in ``(0, 1)``
            (DiffAugment's 1/8: 4 pixels at 32 x 32).

    Shape:
        - images: ``(N, C, H, W)``.
        - Output: ``(N, C, H, W)``, same dtype and device. Images not augmented by any policy are returned
          bit for bit.

    Raises:
        ValueError: an unknown or repeated policy name, ``p`` outside ``[0, 1]``, ``shift`` outside ``(0, 1)``,
            or images that are not a 4-D floating-point tensor.
    """
    names = validate_policy(policy)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability p={p} must be in [0, 1]")
    if not 0.0 < shift < 1.0:
        raise ValueError(f"translation shift={shift} must be a fraction of the image size in (0, 1)")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"augment expects floating-point images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if p == 0.0:
        return images
    out = images
    for name in names:
        chosen = _uniform(out.shape[0], out, generator) < p
        out = torch.where(chosen.view(-1, 1, 1, 1), _RANDOM_POLICIES[name](out, generator, shift), out)
    return out


class AdaptiveStrength:
    r"""ADA's augmentation strength ``p``, adjusted so that D's mean sign on reals stays near a target.

    Every D step, the caller adds ``sum(sign(D(reals)))`` and the number of reals to the accumulators
    (:meth:`accumulate`), then calls :meth:`step` once. Every ``interval``-th step measures the overfitting
    heuristic and moves ``p``:

    .. math::
        r_t = \frac{\sum \operatorname{sign}(D(x_\text{real}))}{n}, \qquad
        p \leftarrow \operatorname{clamp}\Big(p + \operatorname{sign}(r_t - \text{target})
            \cdot \frac{\text{batch} \cdot \text{interval}}{1000 \cdot \text{kimg\_to\_full}},\ 0,\ 1\Big)

    (sums over the reals seen since the last adjustment, on all processes). ``r_t`` near 1 means D is sure of
    every real: it is overfitting, and more augmentation helps; ``r_t`` below the target means less is needed.
    The step size makes ``p`` go from 0 to 1 in ``kimg_to_full`` thousand real images if it always moves the
    same way.

    Args:
        p: initial strength (a fixed strength when ``target`` is None).
        target: the target for ``r_t`` (0.6, as in ADA); ``None`` for a fixed ``p`` (``r_t`` is still measured).
        interval: D steps between adjustments (4, as in ADA).
        kimg_to_full: speed, in thousands of real images for ``p`` to go 0 -> 1. ADA uses 500 for runs of
            thousands of kimg; our default run is 192 kimg (mnist5k, 5,000 images shown 38 times), where 500
            would cap ``p`` at 0.4 for the whole run, so the default is 100 (0.00256 per adjustment at batch 64).

    Attributes:
        p: the current strength, the ``p`` to pass to :func:`augment`.
        signs_sum, signs_count: the accumulators since the last adjustment.
        steps: D steps since the last adjustment.
        rt: the last measured ``r_t`` (None before the first adjustment), for statistics.

    Many processes: the accumulators (:attr:`signs_sum`, :attr:`signs_count`) hold this process's reals
    only. Pass ``reduce`` to :meth:`step`: it is called with them on adjustment steps only (so every process
    calls it at the same step) and must return the sums over all processes, e.g. with Accelerate::

        def reduce(signs_sum, count):
            t = torch.tensor([signs_sum, count], dtype=torch.float64, device=accelerator.device)
            t = accelerator.reduce(t, reduction="sum")
            return t[0].item(), int(t[1].item())

    Every process then computes the same ``p``. :meth:`state_dict` holds plain Python numbers (JSON-safe) and
    restores the adaptation exactly, accumulators included.
    """

    def __init__(
        self, p: float = 0.0, target: float | None = 0.6, interval: int = 4, kimg_to_full: float = 100.0
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation strength p={p} must be in [0, 1]")
        if target is not None and not -1.0 <= target <= 1.0:
            raise ValueError(f"ADA target={target} must be in [-1, 1] (it is compared with a mean sign)")
        if interval < 1:
            raise ValueError(f"ADA interval={interval} must be at least 1 D step")
        if not kimg_to_full > 0:
            raise ValueError(f"ADA kimg_to_full={kimg_to_full} must be positive")
        self.p = float(p)
        self.target = target
        self.interval = interval
        self.kimg_to_full = kimg_to_full
        self.signs_sum = 0.0
        self.signs_count = 0
        self.steps = 0
        self.rt: float | None = None

    @property
    def fixed(self) -> bool:
        """Whether ``p`` is fixed (no target)."""
        return self.target is None

    def accumulate(self, signs_sum: float, count: int) -> None:
        """Add ``sum(sign(D(reals)))`` over ``count`` reals (of this process) to the accumulators."""
        self.signs_sum += float(signs_sum)
        self.signs_count += int(count)

    def step(self, batch: int, reduce: Callable[[float, int], tuple[float, int]] | None = None) -> float:
        """Count one D step; on every ``interval``-th, measure ``r_t`` and adjust ``p``. Returns ``p``.

        Args:
            batch: real images per D step over all processes (the global batch), which sets the step size.
            reduce: ``(signs_sum, count) -> (total_sum, total_count)`` over processes, called on adjustment
                steps only; ``None`` for one process.
        """
        self.steps += 1
        if self.steps < self.interval:
            return self.p
        signs_sum, count = self.signs_sum, self.signs_count
        if reduce is not None:
            signs_sum, count = reduce(signs_sum, count)
        if count > 0:
            self.rt = float(signs_sum) / count
            if self.target is not None:
                direction = (self.rt > self.target) - (self.rt < self.target)
                delta = direction * batch * self.steps / (self.kimg_to_full * 1000)
                self.p = min(max(self.p + delta, 0.0), 1.0)
        self.signs_sum, self.signs_count, self.steps = 0.0, 0, 0
        return self.p

    def state_dict(self) -> dict[str, float | int | None]:
        """The adaptation's state as plain Python numbers (JSON-safe): ``p``, the accumulators and ``r_t``."""
        return {
            "p": self.p,
            "signs_sum": self.signs_sum,
            "signs_count": self.signs_count,
            "steps": self.steps,
            "rt": self.rt,
        }

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        """Restore :meth:`state_dict`'s output (the settings ``target``, ``interval`` and speed stay this object's)."""
        expected = {"p", "signs_sum", "signs_count", "steps", "rt"}
        if set(state) != expected:
            raise ValueError(f"augmentation state has keys {sorted(state)}, expected {sorted(expected)}")
        p = float(state["p"])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation state has p={p}, outside [0, 1]")
        self.p = p
        self.signs_sum = float(state["signs_sum"])
        self.signs_count = int(state["signs_count"])
        self.steps = int(state["steps"])
        self.rt = None if state["rt"] is None else float(state["rt"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(p={self.p}, target={self.target}, interval={self.interval}, "
            f"kimg_to_full={self.kimg_to_full})"
        )
