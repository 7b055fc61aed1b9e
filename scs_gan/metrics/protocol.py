"""Metric names that carry their protocol: ``fid2k_full``, ``kid1k_1k``, ``pr1k_1k``, ``dc50k_full``, ``is50k``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

_NUMBER = r"(\d+(?:\.\d+)?)(k?)"
_NAME = re.compile(rf"^(fid|kid|pr|dc){_NUMBER}_(full|{_NUMBER})$")
_IS_NAME = re.compile(rf"^is{_NUMBER}$")
#: The neighbourhood size k of the k-NN metrics: k = 3 for precision/recall (Kynkaanniemi et al. 2019, as in
#: StyleGAN2-ADA's pr50k3) and k = 5 for density/coverage (Naeem et al. 2020).
NEIGHBOURS = {"pr": 3, "dc": 5}


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: kind, number of generated images, number of real images (None = all), k-NN size.

    ``kind`` is ``fid``, ``kid``, ``pr`` (precision and recall), ``dc`` (density and coverage) or ``is``
    (Inception Score, which uses no real images: ``num_real`` is None and unused). ``k`` is set for pr and dc.
    """

    name: str
    kind: str
    num_fake: int
    num_real: int | None
    k: int | None = None

    @property
    def needs_reals(self) -> bool:
        """Whether the metric compares with real images (all but the Inception Score)."""
        return self.kind != "is"


def _count(number: str, thousands: str) -> int:
    return round(float(number) * (1000 if thousands else 1))


def parse_metric(name: str) -> MetricSpec:
    """``fid2k_full`` -> MetricSpec('fid2k_full', 'fid', 2000, None); errors name the expected forms."""
    name = name.strip()
    if match := _IS_NAME.match(name):
        num_fake = _count(*match.groups())
        if num_fake < 2:
            raise UserError(f"metric {name!r} needs at least 2 generated images")
        return MetricSpec(name, "is", num_fake, None)
    match = _NAME.match(name)
    if not match:
        raise UserError(
            f"metric {name!r} is not of the form fid<N>_full, kid<N>_<M>, pr<N>_<M>, dc<N>_<M> or is<N> "
            "(e.g. fid2k_full, kid1k_1k, pr1k_1k, dc50k_full, is50k, fid500_full)"
        )
    kind, number, k, reals, real_number, real_k = match.groups()
    num_fake = _count(number, k)
    num_real = None if reals == "full" else _count(real_number, real_k)
    least = NEIGHBOURS.get(kind, 1) + 1  # the k-NN metrics need more than k points on each side
    if num_fake < least or (num_real is not None and num_real < least):
        raise UserError(f"metric {name!r} needs at least {least} generated and {least} real images")
    return MetricSpec(name, kind, num_fake, num_real, NEIGHBOURS.get(kind))
