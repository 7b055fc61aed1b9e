"""At which parameter ratio does one family of a study match the best of another?

    python scripts/param_ratio.py studies/recipe11/results.json \
        --family SCS-GAN rampdown50 lr2e3_rampdown50 \
        --family DCGAN dcgan_rampdown50 dcgan_lr2e3_rampdown50

Each ``--family`` is a name followed by the study arms that belong to it (for instance one arm per learning
rate). At every width a family is represented by its arm with the lowest mean of the metric over seeds (each
family is given the same choice, so the selection favours neither). The last family is the reference: its
best width (lowest mean) is the target. For the first family it prints

* the smallest width whose mean is within the target's seed spread (mean + one standard deviation), and
* the parameter count (G + D) at which its mean equals the target's mean, interpolated linearly in the
  logarithm of the parameter count between the two widths that bracket it,

each as a ratio to the target's parameter count. Means and standard deviations are the study's own
(``results.json``'s summary: the sample standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any


def best_per_width(summary: list[dict[str, Any]], arms: list[str], metric: str) -> dict[int, dict[str, Any]]:
    """For each width, the summary row of ``arms`` with the lowest mean ``metric`` (rows without it are skipped)."""
    best: dict[int, dict[str, Any]] = {}
    for row in summary:
        if row["arm"] not in arms or not isinstance(row.get(metric), float) or math.isnan(row[metric]):
            continue
        width = row["width"]
        if width not in best or row[metric] < best[width][metric]:
            best[width] = row
    return dict(sorted(best.items()))


def params(row: dict[str, Any]) -> int:
    """G + D parameters of a summary row."""
    return int(row["g_params"]) + int(row["d_params"])


def matching_params(rows: list[dict[str, Any]], target: float, metric: str) -> float | None:
    """Parameter count at which the rows' mean crosses ``target``, log-linearly between neighbouring widths.

    ``rows`` are sorted by width. The first crossing from above to at or below the target counts; None if the
    family never reaches it, and the smallest width's count if even that one is at or below it.
    """
    if rows[0][metric] <= target:
        return float(params(rows[0]))
    for lo, hi in itertools.pairwise(rows):
        if lo[metric] > target >= hi[metric]:
            t = (lo[metric] - target) / (lo[metric] - hi[metric])
            return math.exp(math.log(params(lo)) + t * (math.log(params(hi)) - math.log(params(lo))))
    return None


def _cell(row: dict[str, Any], metric: str) -> str:
    std = row.get(f"{metric}_std")
    spread = "" if std is None or math.isnan(std) else f" ± {std:.1f}"
    return f"{row[metric]:.1f}{spread} ({row['seeds']} seeds, {row['label']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a study's results.json")
    parser.add_argument("--family", nargs="+", action="append", required=True, metavar=("NAME", "ARM"))
    parser.add_argument("--metric", default="fid1k_1k")
    args = parser.parse_args()
    if len(args.family) < 2 or any(len(f) < 2 for f in args.family):
        sys.exit("error: give at least two --family NAME ARM [ARM ...]")
    try:
        summary = json.loads(args.results.read_text())["summary"]
    except (OSError, ValueError, KeyError) as error:
        sys.exit(f"error: {args.results} is not a readable study results.json ({error})")
    metric = args.metric
    families = {name: best_per_width(summary, arms, metric) for name, *arms in args.family}
    for name, rows in families.items():
        if not rows:
            sys.exit(f"error: no arm of family {name} has {metric} in {args.results}")
        print(f"{name}:")
        for width, row in rows.items():
            print(f"  width {width:3d}  {params(row):9,d} parameters  {metric} {_cell(row, metric)}")
    ref_name, ref_rows = list(families.items())[-1]
    ref = min(ref_rows.values(), key=lambda r: r[metric])
    ref_std = ref.get(f"{metric}_std") or 0.0
    ref_std = 0.0 if math.isnan(ref_std) else ref_std
    print(f"best {ref_name}: width {ref['width']}, {params(ref):,} parameters, {metric} {_cell(ref, metric)}")
    name, rows = next(iter(families.items()))
    ordered = list(rows.values())
    within = next((r for r in ordered if r[metric] <= ref[metric] + ref_std), None)
    if within is None:
        print(f"{name}: no width is within {ref_name}'s spread ({ref[metric]:.1f} + {ref_std:.1f})")
    else:
        print(
            f"{name}: width {within['width']} is within its spread ({within[metric]:.1f} <= {ref[metric]:.1f} + "
            f"{ref_std:.1f}) at {params(within) / params(ref):.2f}x the parameters"
        )
    at = matching_params(ordered, ref[metric], metric)
    if at is None:
        print(f"{name}: its mean never reaches {ref[metric]:.1f} at the widths measured")
    else:
        print(f"{name}: its mean equals {ref[metric]:.1f} at about {at:,.0f} parameters, {at / params(ref):.2f}x")


if __name__ == "__main__":
    main()
