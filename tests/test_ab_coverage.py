"""The bootstrap intervals cover the true difference at about their nominal 95% rate.

Simulated arms with a known effect (tools/ab_simulate.py): the treatment scores
the same events with less noise than the control. The **true difference** of a
metric is the difference of the two arms' *population* values: the value the
metric takes over infinitely many users drawn from the simulator, which is what
an evaluation on a finite sample of users estimates. It is approximated once by
evaluating an independent draw of ``TRUTH_USERS`` users; with a few hundred
users per repetition the Monte Carlo error of that truth is a few percent of a
repetition's standard error, too small to move the coverage.

Each repetition draws fresh users (new seed), evaluates them with the harness
exactly as the CLI does, and checks whether each metric's 95% interval of the
difference contains the true difference. Over ``REPS`` repetitions the share
must lie in [0.90, 0.99]: a wrong pairing, a wrong resampling unit (events
instead of users) or a biased estimator fails this.
"""

from __future__ import annotations

from functools import cache

import pytest

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame
from tools.ab_simulate import SimArm, simulate

ARMS = (SimArm("control", 1.0), SimArm("treatment", 0.8, 0.15))
METRICS = ("auc", "gauc", "logloss", "hr@3", "ndcg@3", "ctr@3")
TRUTH_USERS = 100_000


@cache
def true_differences() -> dict[str, float]:
    """Population value of treatment minus control, per metric (one large independent draw)."""
    big = simulate(TRUTH_USERS, ARMS, seed=10**6)
    result = evaluate(from_frame(big), "control", AbConfig(metrics=METRICS, bootstrap=2))
    return {c.metric: c.lift.abs_lift for c in result.comparisons}


def coverage(design: str, users: int, reps: int) -> dict[str, float]:
    truth = true_differences()
    covered = {m: 0 for m in METRICS}
    for rep in range(reps):
        pred = from_frame(simulate(users, ARMS, seed=rep))
        config = AbConfig(design=design, metrics=METRICS, bootstrap=1000, seed=rep, salt=f"rep-{rep}")
        for c in evaluate(pred, "control", config).comparisons:
            covered[c.metric] += c.lift.abs_ci[0] <= truth[c.metric] <= c.lift.abs_ci[1]
    return {m: n / reps for m, n in covered.items()}


def test_paired_interval_covers_the_true_difference_at_the_nominal_rate():
    rates = coverage("paired", users=300, reps=200)
    assert all(0.90 <= r <= 0.99 for r in rates.values()), rates


def test_bucketed_interval_covers_the_true_difference_at_the_nominal_rate():
    rates = coverage("bucketed", users=600, reps=200)
    assert all(0.90 <= r <= 0.99 for r in rates.values()), rates


@pytest.mark.heavy
def test_coverage_holds_with_more_repetitions():
    rates = coverage("paired", users=1000, reps=1000)
    assert all(0.925 <= r <= 0.975 for r in rates.values()), rates
