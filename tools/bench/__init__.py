"""Benchmarks, each run side by side with a reference measured in the same run.

Every benchmark module exposes ``run(quick: bool) -> list[Figure]`` and is
listed in :data:`BENCHMARKS`; ``recfl bench`` runs them all and prints one
table. Figures are medians of several repetitions; ratios compare against a
reference timed in the same process (never against a hard-coded number).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured number, optionally with the reference it is compared to."""

    benchmark: str
    metric: str
    value: float
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """``value / reference_value`` (e.g. 0.5 = half the reference's time)."""
        if self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


BENCHMARKS: tuple[str, ...] = ("federated", "federated_scale", "consumer", "ab_harness", "device", "matching")
