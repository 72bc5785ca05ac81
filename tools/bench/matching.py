"""Coarse matching at scale: time and peak memory as device users, pool size and profile dimensions grow.

Scale size: a synthetic set of 220,000 users (about 13M events, 1,000
categories, 1,000,000 items); pools of the sharing users' training events
with share fractions 1/8, 1/4 and 1/2 (about 1.3M, 2.6M and 5.2M samples);
100,000 device users matched against the 5.2M-sample pool, plus smaller
cases for the growth table. Standard size: the same shape at 20,000 users;
quick: 5,000 users.

Every case runs ``write_candidates`` (pool load, profiles, blocked top-M,
budgets, Parquet output) in a fresh process, so its peak resident memory is
its own; growth figures are ratios against the smallest case of the same
run. The reference for the top-M step is scikit-learn's brute-force cosine
``NearestNeighbors`` on the same profiles and device users, timed in the
same process as recfl's blocked product + threshold selection (medians of
three), with the share of identical top-M sets as a check (where they
differ, checked in float64, the pool users involved tie exactly: recfl
breaks ties by pool user id, scikit-learn arbitrarily).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_pool.matching import MatchConfig, Matcher, rank_pool_users, write_candidates
from cloud_pool.pool import build_pool
from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.formats import SyntheticSpec, load
from recfl.core.pool import load_split, pool_summary
from tools.bench import Figure, in_fresh_process, median_seconds, peak_rss_mb

BENCH = "matching"


@dataclass(frozen=True)
class Scale:
    """The data set, the pools (share fractions) and the (device users, share fraction, item dims) cases."""

    users: int
    items: int
    categories: int
    clusters: int
    fractions: tuple[float, ...]
    cases: tuple[tuple[int, float, int], ...]
    reference_users: int


TINY = Scale(5_000, 20_000, 100, 20, (0.5,), ((1_000, 0.5, 512), (2_000, 0.5, 512), (1_000, 0.5, 0)), 500)
STANDARD = Scale(20_000, 100_000, 200, 40, (0.25, 0.5),
              ((5_000, 0.5, 512), (10_000, 0.5, 512), (5_000, 0.25, 512), (5_000, 0.5, 0)), 1_000)
FULL = Scale(220_000, 1_000_000, 1_000, 100, (0.125, 0.25, 0.5),
             ((25_000, 0.5, 512), (50_000, 0.5, 512), (100_000, 0.5, 512), (25_000, 0.25, 512), (25_000, 0.125, 512),
              (25_000, 0.5, 0)), 2_000)


def _prepare(scale: Scale, root: Path) -> dict:
    spec = SyntheticSpec(users=scale.users, items=scale.items, categories=scale.categories, clusters=scale.clusters, seed=0)
    return prepare(load("synthetic", None, spec), root / "data").manifest["train"]


def _build(root: Path, fraction: float) -> dict:
    started = time.perf_counter()
    build_pool(PreparedDataset(root / "data"), root / f"pool-{fraction}", fraction)
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb(), **pool_summary(root / f"pool-{fraction}")}


def _match(root: Path, fraction: float, users: np.ndarray, item_dims: int) -> dict:
    baseline = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    out = root / "candidates"
    summary = write_candidates(root / f"pool-{fraction}", PreparedDataset(root / "data"), out, MatchConfig(item_dims=item_dims),
                               users=users, progress=False)
    result = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, "peak_mb": peak_rss_mb(),
              "baseline_mb": baseline, "candidates": summary["candidates"]}
    Path(summary["path"]).unlink()
    return result


def _reference(root: Path, fraction: float, users: np.ndarray) -> dict:
    """recfl's top-M step vs scikit-learn's brute cosine k-NN on the same profiles (this process, medians of 3)."""
    from sklearn.neighbors import NearestNeighbors


    matcher = Matcher(root / f"pool-{fraction}", PreparedDataset(root / "data"))
    config, pool, device = matcher.config, matcher.pool, matcher.profiles(users)
    blocks = [slice(lo, lo + config.block_size) for lo in range(0, len(device.users), config.block_size)]
    neighbours = NearestNeighbors(n_neighbors=config.top_m, algorithm="brute", metric="cosine")

    def ours():
        return [rank_pool_users(pool, device.users[b], device.vectors[b], device.inv_norm[b], config) for b in blocks]

    def sklearn():
        return neighbours.fit(pool.profiles).kneighbors(device.vectors)

    ours_s, sklearn_s = median_seconds(ours, repeats=3), median_seconds(sklearn, repeats=3)
    found = [set(col[row == r]) for b, (row, col, _) in zip(blocks, ours()) for r in range(len(device.users[b]))]
    distance, index = sklearn()
    theirs = [set(i[d < 1 - 1e-6]) for d, i in zip(distance, index)]
    return {"ours": ours_s, "sklearn": sklearn_s, "pool_users": len(pool.users), "dims": matcher.spec.dims,
            "identical": float(np.mean([a == b for a, b in zip(found, theirs)])),
            "overlap": float(np.mean([len(a & b) / max(len(a), 1) for a, b in zip(found, theirs)]))}


def run(size: str) -> list[Figure]:
    scale = {"quick": TINY, "standard": STANDARD, "scale": FULL}[size]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        in_fresh_process(_prepare, scale, root)
        pools = {f: in_fresh_process(_build, root, f) for f in scale.fractions}
        for fraction, built in pools.items():
            figures.append(Figure(BENCH, f"pool build, {built['pool_events']:,} samples", built["seconds"], "s",
                                  note=f"{built['pool_events'] / built['seconds']:,.0f} samples/s, peak RSS {built['peak_mb']:,.0f} MB"))

        device = load_split(root / f"pool-{max(scale.fractions)}").device_users  # device users of every smaller pool too
        chosen = np.random.default_rng(0).permutation(device)
        ref = in_fresh_process(_reference, root, max(scale.fractions), np.sort(chosen[: scale.reference_users]))
        figures.append(Figure(
            BENCH, f"top-50 pool users of {scale.reference_users:,} device users among {ref['pool_users']:,} ({ref['dims']} dims)",
            ref["ours"], "s", "scikit-learn NearestNeighbors(brute, cosine)", ref["sklearn"],
            note=f"same top-M sets for {ref['identical']:.1%} of users, {ref['overlap']:.2%} of members in common "
                 "(the others differ only among pool users tied at the last place, which recfl orders by id)"))
        base = None
        for users, fraction, item_dims in scale.cases:
            result = in_fresh_process(_match, root, fraction, np.sort(chosen[:users]), item_dims)
            pool = pools[fraction]
            case = (f"{users:,} users x {pool['pool_events']:,} samples of {pool['sharing_users']:,} pool users, "
                    + ("categories only" if not item_dims else f"categories + {item_dims} items"))
            base = base or (case, result)
            figures += [
                Figure(BENCH, f"match {case}: time", result["seconds"], "s", base[0], base[1]["seconds"],
                       note=f"{result['candidates']:,} candidates; CPU {result['cpu_seconds']:,.0f} s"),
                Figure(BENCH, f"match {case}: peak RSS", result["peak_mb"], "MB", base[0], base[1]["peak_mb"],
                       note=f"interpreter and imports {result['baseline_mb']:,.0f} MB"),
            ]
    return figures
