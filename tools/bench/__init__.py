"""Benchmarks, each run side by side with a reference measured in the same run.

Every benchmark module exposes ``run(size: str) -> list[Figure]`` for a size
in :data:`SIZES` and is listed in :data:`BENCHMARKS`; ``recfl bench`` runs
them all and prints one table. Figures are medians of several repetitions; ratios compare against a
reference timed in the same process (never against a hard-coded number).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of a process (``VmHWM``, MB). Unlike ``ru_maxrss`` it starts afresh at
    ``exec``, so a spawned child does not inherit its parent's peak."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def in_fresh_process(fn: Callable, *args):
    """``fn(*args)`` in a new interpreter, so its time and peak memory are its own."""
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


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


# quick: a smoke run of every benchmark; standard: the README table (under 15 minutes on 2 cores);
# scale: standard plus the large cases (100,000 users and clients, 5M pool samples), about 40 minutes on 2 cores.
SIZES: tuple[str, ...] = ("quick", "standard", "scale")

BENCHMARKS: tuple[str, ...] = ("federated", "privacy", "federated_scale", "consumer", "ab_harness", "device", "matching",
                               "rerun")
