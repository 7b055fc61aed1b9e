"""Does augmentation leak into the samples? Compare where the ink sits in generated and real images.

    python scripts/augment_leak_check.py SNAPSHOT [SNAPSHOT ...] [--count 1000]

Translation that leaked would spread the digits' centres of mass away from the middle; cutout that leaked would
leave images with a large empty (black) block inside the digit's bounding box. For each snapshot and for the
same number of real images of the snapshot's dataset it prints: the mean and 95th percentile distance of the
ink's centre of mass from the image centre (pixels), and the share of images whose bounding box holds an
all-black square of a quarter of the image side (cutout squares are half the side).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from scs_gan.config import from_dict
from scs_gan.data import DataConfig, build_dataset, to_float
from scs_gan.data.dataset import spread_subset
from scs_gan.latents import latents_for_seeds
from scs_gan.snapshot import load_generator


def ink_statistics(images: torch.Tensor) -> dict[str, float]:
    """Centre-of-mass distance from the middle and the share of images with an empty block in their box."""
    ink = ((images.float() + 1) / 2).clamp(0, 1).mean(1)  # (N, H, W) in [0, 1]
    n, h, w = ink.shape
    ys, xs = torch.arange(h).float(), torch.arange(w).float()
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy = (ink.sum(2) * ys).sum(1) / mass
    cx = (ink.sum(1) * xs).sum(1) / mass
    distance = torch.hypot(cy - (h - 1) / 2, cx - (w - 1) / 2)
    side = max(h // 4, 2)
    dark = (ink < 0.1).float().unsqueeze(1)
    empty_block = F.avg_pool2d(dark, side, stride=1).squeeze(1) == 1  # a side x side block with no ink at all
    holes = 0
    for i in range(n):
        rows, cols = torch.nonzero(ink[i] > 0.5, as_tuple=True)
        if len(rows) == 0:
            continue
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        inside = empty_block[i, top : max(bottom - side + 2, top + 1), left : max(right - side + 2, left + 1)]
        holes += bool(inside.any())
    return {
        "centre distance mean": distance.mean().item(),
        "centre distance p95": distance.quantile(0.95).item(),
        "images with an empty block in the box": holes / n,
    }


def main() -> None:
    """Print the statistics of the reals and of every snapshot given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("snapshots", nargs="+")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    generators = [load_generator(path) for path in args.snapshots]
    saved = (generators[0].snapshot_info.run_config or {}).get("data") or {}
    dataset = build_dataset(from_dict(DataConfig, saved))
    reals = torch.stack([dataset[int(i)] for i in spread_subset(len(dataset), args.count)])
    rows = {"real images": ink_statistics(to_float(reals))}
    for path, generator in zip(args.snapshots, generators, strict=True):
        with torch.no_grad():
            z = latents_for_seeds(range(args.count), generator.z_dim)
            rows[path] = ink_statistics(torch.cat([generator(chunk) for chunk in z.split(250)]))
    for name, stats in rows.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
