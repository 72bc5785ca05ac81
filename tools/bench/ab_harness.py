"""A/B harness speed: 1,000,000 prediction rows over 10,000 users, 3 arms, 1,000 bootstrap resamples.

The figure is the wall time of :func:`ab_testing.evaluate.evaluate` (input
checks, per-user metrics, 1,000 paired resamples of all arms and metrics,
lifts), the median of several runs. Two references are measured in the same run:

* the naive way: per resample, build the resampled table with pandas (a merge
  of the drawn users with their events) and compute the same metrics with
  :mod:`recfl.core.metrics` (groupby-based); timed on a few resamples and scaled to
  1,000 -- what the vectorized bootstrap replaces;
* the point metrics once (recfl.core.metrics on each arm, no interval): the floor
  cost of looking at the numbers at all.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame
from recfl.core.metrics import auc, gauc, logloss, per_user_topk
from tools.ab_simulate import SimArm, simulate
from tools.bench import Figure, median_seconds

BENCH = "ab_harness"
METRICS = ("auc", "gauc", "logloss", "hr@10", "ndcg@10")


def _point_metrics(frame: pd.DataFrame) -> dict:
    """The overall metrics of one arm with recfl.core.metrics (what the naive loop recomputes per resample)."""

    u, y, s = frame["user_id"].to_numpy(), frame["label"].to_numpy(), frame["score"].to_numpy()
    top = per_user_topk(u, y, s, 10)
    has = top["positives"] > 0
    return {"auc": auc(y, s), "gauc": gauc(u, y, s)[0], "logloss": logloss(y, s),
            "hr@10": top["hit"][has].mean(), "ndcg@10": (top["dcg"] / top["idcg"])[has].mean()}


def _naive_resample(arms: dict[str, pd.DataFrame], users: np.ndarray, rng: np.random.Generator) -> None:
    """One bootstrap resample the straightforward way: resampled tables, then the metrics of each arm."""
    drawn = pd.DataFrame({"user_id": rng.choice(users, size=len(users)), "copy": np.arange(len(users))})
    for frame in arms.values():
        resampled = drawn.merge(frame, on="user_id").drop(columns="user_id").rename(columns={"copy": "user_id"})
        _point_metrics(resampled)


def run(size: str) -> list[Figure]:
    quick = size == "quick"

    users, resamples = (2_000, 200) if quick else (10_000, 1_000)
    frame = simulate(users, [SimArm("control", 1.0), SimArm("b", 0.9), SimArm("c", 0.8)],
                     events_per_user=1_000_000 / 3 / 10_000, seed=0)
    pred = from_frame(frame)
    case = f"{len(frame):,} rows, {users:,} users, 3 arms, {resamples:,} resamples"
    paired = median_seconds(lambda: evaluate(pred, "control", AbConfig(metrics=METRICS, bootstrap=resamples)),
                            repeats=1 if quick else 3, warmup=0)
    bucketed = median_seconds(lambda: evaluate(pred, "control", AbConfig(design="bucketed", metrics=METRICS,
                                                                         bootstrap=resamples)), repeats=1, warmup=0)
    arms = {arm: pred.of(arm) for arm in pred.arms}
    point = median_seconds(lambda: [_point_metrics(f) for f in arms.values()], repeats=3, warmup=0)
    rng, ids, naive_n = np.random.default_rng(0), np.unique(frame["user_id"]), 2 if quick else 5
    started = time.perf_counter()
    for _ in range(naive_n):
        _naive_resample(arms, ids, rng)
    naive = (time.perf_counter() - started) / naive_n * resamples
    return [
        Figure(BENCH, f"paired evaluation, {case}", paired, "s",
               f"naive pandas loop per resample ({naive_n} timed, scaled to {resamples:,})", naive,
               note=", ".join(METRICS)),
        Figure(BENCH, f"paired evaluation, {case}", paired, "s", "point metrics once, no intervals", point),
        Figure(BENCH, f"bucketed evaluation, {case}", bucketed, "s",
               f"naive pandas loop per resample ({naive_n} timed, scaled to {resamples:,})", naive,
               note="each arm on its third of the users"),
    ]


if __name__ == "__main__":
    for figure in run("quick" if "--quick" in sys.argv else "standard"):
        print(f"{figure.metric}: {figure.value:.2f} {figure.unit} vs {figure.reference}: {figure.reference_value:.2f} "
              f"{figure.unit} (ratio {figure.ratio:.4f})")
