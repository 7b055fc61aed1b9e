"""Metric names that carry their protocol: ``fid2k_full``, ``kid1k_1k``, ``fid500_full``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

_NAME = re.compile(r"^(fid|kid)(\d+(?:\.\d+)?)(k?)_(full|(\d+(?:\.\d+)?)(k?))$")


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: kind, number of generated images, number of real images (None = all)."""

    name: str
    kind: str
    num_fake: int
    num_real: int | None


def parse_metric(name: str) -> MetricSpec:
    """``fid2k_full`` -> MetricSpec('fid2k_full', 'fid', 2000, None); errors name the expected form."""
    match = _NAME.match(name.strip())
    if not match:
        raise UserError(
            f"metric {name!r} is not of the form fid<N>_full, kid<N>_<M> (e.g. fid2k_full, kid1k_1k, fid500_full)"
        )
    kind, number, k, reals, real_number, real_k = match.groups()
    num_fake = round(float(number) * (1000 if k else 1))
    num_real = None if reals == "full" else round(float(real_number) * (1000 if real_k else 1))
    if num_fake < 2 or (num_real is not None and num_real < 2):
        raise UserError(f"metric {name!r} needs at least 2 generated and 2 real images")
    return MetricSpec(name.strip(), kind, num_fake, num_real)
