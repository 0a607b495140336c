"""Seeded, stratified, stable subsets (``--ftgate-limit``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_ftgate.errors import ConfigError

if TYPE_CHECKING:
    from pytest_ftgate.benchmarks.example import Example


def check_limit(limit: object) -> int | None:
    """``None`` or a positive int; anything else is a ConfigError."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"--ftgate-limit must be a positive integer, got {limit!r}")
    return limit


def sample_key(seed: int, ident: str) -> str:
    """The order examples are drawn in: ``sha256(f"{seed}:{id}")``."""
    return hashlib.sha256(f"{seed}:{ident}".encode()).hexdigest()


def allocate(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Proportional quotas by the largest-remainder method; ties go to the smaller stratum name."""
    total = sum(sizes.values())
    exact = {name: size * limit / total for name, size in sizes.items()}
    quotas = {name: int(value) for name, value in exact.items()}
    left = limit - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda name: (-(exact[name] - quotas[name]), name))
    for name in by_remainder[:left]:
        quotas[name] += 1
    return quotas


def stratified_subset(examples: Sequence[Example], limit: object, seed: int = 0) -> list[Example]:
    """A fixed subset of ``limit`` examples, balanced on ``Example.stratum``.

    - ``limit`` None, or >= the number of examples: every example, in the original order.
    - Otherwise each stratum gets a share proportional to its size (largest remainder), and within
      a stratum the examples with the smallest ``sha256(f"{seed}:{id}")`` are taken. The choice
      depends only on the ids, strata and seed, never on the file order, and adding rows changes
      few of the chosen ones.
    - The subset is returned sorted by that same hash: a stable order that does not depend on the
      input order, in which any prefix is itself a roughly stratified random sample.
    """
    checked = check_limit(limit)
    if checked is None or checked >= len(examples):
        return list(examples)
    strata: dict[str, list[tuple[str, Example]]] = {}
    for example in examples:
        strata.setdefault(example.stratum, []).append((sample_key(seed, example.id), example))
    quotas = allocate({name: len(members) for name, members in strata.items()}, checked)
    chosen: list[tuple[str, Example]] = []
    for name, members in strata.items():
        members.sort(key=lambda pair: (pair[0], pair[1].id))
        chosen.extend(members[: quotas[name]])
    chosen.sort(key=lambda pair: (pair[0], pair[1].id))
    return [example for _, example in chosen]
