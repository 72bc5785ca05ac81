"""The bootstrap machinery: resample counts, reweighted metrics equal explicit resamples, lifts, corrections, SRM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ab_testing.metrics import ArmEstimator, parse_metrics
from ab_testing.stats import (
    adjust_p_values,
    bootstrap,
    lift,
    resample_counts,
    srm_check,
)
from recfl.core.metrics import auc, gauc, logloss, per_user_topk

METRICS = parse_metrics(["auc", "gauc", "logloss", "hr@3", "ndcg@3", "ctr@3", "uctr@3"])


def test_resample_counts_draw_n_users_per_resample_independently_of_block_size():
    counts = resample_counts(np.random.default_rng(7), 50, 10)
    assert counts.shape == (10, 50) and counts.dtype == np.int32 and (counts.sum(axis=1) == 50).all()
    rng = np.random.default_rng(7)
    assert (np.concatenate([resample_counts(rng, 50, 3), resample_counts(rng, 50, 7)]) == counts).all()
    assert (counts == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)  # a user is left out with probability ~1/e


def explicit_metrics(users, labels, scores, weights):
    """The metrics on the resampled data built for real: user u's events copied w_u times, each copy a new user."""
    copies = [(np.flatnonzero(users == u), c) for u, w in enumerate(weights) for c in range(w)]
    idx = np.concatenate([rows for rows, _ in copies])
    new_users = np.concatenate([np.full(len(rows), i) for i, (rows, _) in enumerate(copies)])
    y, s = labels[idx], scores[idx]
    top = per_user_topk(new_users, y, s, 3)
    has = top["positives"] > 0
    return {"auc": auc(y, s), "gauc": gauc(new_users, y, s)[0], "logloss": logloss(y, s),
            "hr@3": top["hit"][has].mean(), "ndcg@3": (top["dcg"] / top["idcg"])[has].mean(),
            "ctr@3": top["clicks"].sum() / top["shown"].sum(), "uctr@3": top["hit"].mean()}


def test_reweighted_metrics_equal_metrics_of_explicit_resamples():
    rng = np.random.default_rng(8)
    n = 25
    users = rng.integers(0, n, 400)
    labels = rng.integers(0, 2, 400)
    scores = np.round(0.05 + 0.9 * rng.random(400), 1)
    est = ArmEstimator.build(METRICS, users, n, labels, scores, {"all": np.ones(n, bool)})
    counts = resample_counts(rng, n, 4)
    values = est(counts)
    for row, weights in zip(values, counts):
        expected = explicit_metrics(users, labels, scores, weights)
        assert dict(zip([k[1] for k in est.keys], row)) == pytest.approx(expected, rel=1e-9)


def test_bootstrap_runs_every_estimator_on_the_same_resamples():
    rng = np.random.default_rng(9)
    users, labels, scores = rng.integers(0, 30, 300), rng.integers(0, 2, 300), rng.random(300)
    est = ArmEstimator.build(METRICS, users, 30, labels, scores, {"all": np.ones(30, bool)})
    a, b = bootstrap([est, est], 30, 20, np.random.default_rng(1), bytes_per_resample=10**9)  # blocks of 1
    assert a.shape == (20, len(METRICS)) and (a == b).all()
    (again,) = bootstrap([est], 30, 20, np.random.default_rng(1), bytes_per_resample=1)  # one block
    np.testing.assert_allclose(again, a, rtol=1e-12)  # same draws; only the matrix products' blocking differs


def test_lift_interval_p_value_and_relative_lift():
    rng = np.random.default_rng(10)
    control = 0.70 + 0.01 * rng.normal(size=4000)
    treatment = control + 0.02 + 0.005 * rng.normal(size=4000)  # paired: the difference has sd 0.005
    result = lift(0.70, 0.72, control, treatment, 0.95)
    assert result.abs_lift == pytest.approx(0.02) and result.rel_lift == pytest.approx(0.02 / 0.70)
    assert result.abs_ci[0] == pytest.approx(0.02 - 1.96 * 0.005, abs=5e-4)
    assert result.abs_ci[1] == pytest.approx(0.02 + 1.96 * 0.005, abs=5e-4)
    assert result.se == pytest.approx(0.005, rel=0.05) and result.p_value == pytest.approx(6.3e-5, rel=0.3)
    none = lift(0.70, 0.70, control, control + 0.005 * rng.normal(size=4000), 0.95)
    assert none.p_value > 0.9
    with_nan = lift(0.7, 0.72, np.r_[control[:10], np.nan], np.r_[treatment[:10], 0.7], 0.95)
    assert with_nan.undefined == 1 and math.isfinite(with_nan.abs_ci[0])


def test_holm_and_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    assert np.allclose(adjust_p_values(p, "holm")[:4], [0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 -> 0.02, 0.02, 0.04, 0.04 -> running min from the top
    assert np.allclose(adjust_p_values(p, "bh")[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(adjust_p_values(p, "holm")[4]) and np.allclose(adjust_p_values(p, "none")[:4], p[:4])
    assert adjust_p_values([0.5, 0.9], "holm").max() == 1.0


def test_srm_check_fires_on_a_skewed_split_only():
    shares = {"a": 0.5, "b": 0.5}
    balanced = srm_check({"a": 5030, "b": 4970}, shares, 0.001)
    skewed = srm_check({"a": 5300, "b": 4700}, shares, 0.001)
    assert not balanced.mismatch and balanced.p_value > 0.5
    assert skewed.mismatch and skewed.chi2 == pytest.approx(36.0) and skewed.expected == {"a": 5000.0, "b": 5000.0}
    uneven = srm_check({"a": 3400, "b": 6600}, {"a": 1 / 3, "b": 2 / 3}, 0.001)
    assert not uneven.mismatch
