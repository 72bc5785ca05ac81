"""A/B metric values against independent references: scikit-learn, brute force over tie orders, hand cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from ab_testing.metrics import ArmEstimator, AucResampler, parse_metrics
from recfl.core.errors import RecflError
from recfl.core.metrics import auc, gauc, logloss, per_user_topk

ALL = parse_metrics(["auc", "gauc", "logloss", "hr@3", "ndcg@3", "ctr@3", "uctr@3"])


def point(users, labels, scores, metrics=ALL, segments=None):
    """Each metric's value on all users (ids 0..n-1), as the harness computes it."""
    users, labels, scores = np.asarray(users), np.asarray(labels), np.asarray(scores, float)
    n = int(users.max()) + 1
    est = ArmEstimator.build(metrics, users, n, labels, scores, segments or {"all": np.ones(n, bool)})
    return dict(zip(est.keys, est(np.ones((1, n), np.int32))[0]))


def brute_force_topk(labels, scores, k):
    """(hit, dcg, clicks) averaged over every order of the tied scores."""
    outcomes = []
    for perm in itertools.permutations(range(len(labels))):
        if all(scores[perm[i]] >= scores[perm[i + 1]] for i in range(len(perm) - 1)):
            top = [labels[j] for j in perm[:k]]
            outcomes.append((float(any(top)), sum(t / math.log2(i + 2) for i, t in enumerate(top)), float(sum(top))))
    return np.mean(outcomes, axis=0)


def test_topk_is_the_expectation_over_orders_of_tied_scores():
    rng = np.random.default_rng(1)
    for _ in range(150):
        n, k = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        labels, scores = rng.integers(0, 2, n), rng.integers(0, 3, n) / 2  # heavy ties
        row = per_user_topk(np.zeros(n, int), labels, scores, k).iloc[0]
        assert np.allclose([row.hit, row.dcg, row.clicks], brute_force_topk(list(labels), list(scores), k)), (labels, scores, k)
        assert row.shown == min(k, n) and row.idcg == pytest.approx(sum(1 / math.log2(i + 2) for i in range(min(k, labels.sum()))))


def test_ndcg_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    users = np.repeat(np.arange(40), rng.integers(2, 15, 40))
    labels = rng.integers(0, 2, len(users))
    scores = np.round(rng.random(len(users)), 1)
    expected = [ndcg_score([labels[users == u]], [scores[users == u]], k=3) for u in range(40) if labels[users == u].any()]
    assert point(users, labels, scores)[("all", "ndcg@3")] == pytest.approx(np.mean(expected), rel=1e-12)


def test_hand_case_with_ties_and_one_class_users():
    # user 0: scores tie at the top (one positive, one negative), a negative below -> AUC 0.75 over 3 events
    # user 1: only positives -> excluded from gAUC (counted), a hit for sure
    # user 2: only negatives -> excluded from gAUC, hr and ndcg; counts in ctr and uctr as a user without a click
    users = [0, 0, 0, 1, 1, 2]
    labels = [1, 0, 0, 1, 1, 0]
    scores = [0.8, 0.8, 0.1, 0.5, 0.5, 0.9]
    k1 = parse_metrics(["auc", "gauc", "hr@1", "ndcg@1", "ctr@1", "uctr@1"])
    values = point(users, labels, scores, k1)
    # global AUC: 3 positives x 3 negatives; pairs won: (0.8 vs 0.1) x1 + (0.5 vs 0.1) x2, ties (0.8 vs 0.8) half
    assert values[("all", "auc")] == pytest.approx((1 + 0.5 + 2) / 9)
    assert values[("all", "gauc")] == pytest.approx(0.75)
    assert values[("all", "hr@1")] == pytest.approx((0.5 + 1) / 2)  # user 0 hits with probability 1/2
    assert values[("all", "ndcg@1")] == pytest.approx((0.5 + 1) / 2)
    assert values[("all", "ctr@1")] == pytest.approx((0.5 + 1 + 0) / 3)
    assert values[("all", "uctr@1")] == pytest.approx((0.5 + 1 + 0) / 3)
    est = ArmEstimator.build(k1, np.array(users), 3, np.array(labels), np.array(scores), {"all": np.ones(3, bool)})
    assert est.counted_users() == {"gauc": 1, "hr@1": 2, "ndcg@1": 2, "ctr@1": 3, "uctr@1": 3}


def test_point_values_equal_recfl_metrics_and_sklearn():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 60, 900)
    labels = rng.integers(0, 2, 900)
    scores = np.round(0.01 + rng.random(900) * 0.6 + 0.3 * labels, 2)  # in (0, 1): no clipping
    values = point(users, labels, scores)
    assert values[("all", "auc")] == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert values[("all", "auc")] == pytest.approx(auc(labels, scores), rel=1e-12)
    assert values[("all", "gauc")] == pytest.approx(gauc(users, labels, scores)[0], rel=1e-12)
    assert values[("all", "logloss")] == pytest.approx(log_loss(labels, scores), rel=1e-9)
    assert values[("all", "logloss")] == pytest.approx(logloss(labels, scores), rel=1e-12)


def test_segment_values_equal_values_on_the_segment_alone():
    rng = np.random.default_rng(4)
    users = rng.integers(0, 50, 700)
    labels = rng.integers(0, 2, 700)
    scores = np.round(rng.random(700), 2)
    odd = np.arange(50) % 2 == 1
    values = point(users, labels, scores, segments={"all": np.ones(50, bool), "odd": odd})
    keep = users % 2 == 1
    alone = point(users[keep], labels[keep], scores[keep])
    for m in ALL:
        assert values[("odd", m.name)] == pytest.approx(alone[("all", m.name)], rel=1e-12), m.name


def test_weighted_auc_matches_sklearn_sample_weights_on_both_integer_paths():
    rng = np.random.default_rng(5)
    users = rng.integers(0, 30, 500)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500), 1)  # many ties between positives and negatives
    counts = rng.multinomial(30, np.ones(30) / 30, size=6).astype(np.int32)
    expected = [roc_auc_score(labels, scores, sample_weight=w[users]) for w in counts]
    resampler = AucResampler(users, labels, scores)
    assert np.allclose(resampler(counts), expected, rtol=0, atol=1e-12)
    resampler.max_user_negatives = 2**31  # forces the int64 cumulative sums
    assert np.allclose(resampler(counts), expected, rtol=0, atol=1e-12)


def test_auc_is_nan_when_a_resample_has_one_class():
    resampler = AucResampler(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0.2, 0.7, 0.5]))
    values = resampler(np.array([[2, 0], [0, 2], [1, 1]], np.int32))  # only user 0 / only user 1 / both
    assert math.isnan(values[0]) and math.isnan(values[1]) and values[2] == 0.5


@pytest.mark.parametrize("names,message", [
    (["auc", "ndcg"], "unknown metric 'ndcg'"),
    (["hr@0"], "unknown metric 'hr@0'"),
    (["auc@5"], "unknown metric 'auc@5'"),
    (["precision"], "known: auc, gauc, logloss, hr@K, ndcg@K, ctr@K, uctr@K"),
    ([], "no metrics given"),
])
def test_metric_names_are_checked(names, message):
    with pytest.raises(RecflError, match=message.replace("@", "@").replace("(", r"\(")):
        parse_metrics(names)


def test_metric_directions():
    assert [m.higher_is_better for m in parse_metrics(["auc", "logloss", "ndcg@5"])] == [True, False, True]
    assert parse_metrics(["NDCG@5", "ndcg@5"])[0].name == "ndcg@5" and len(parse_metrics(["hr@5", "hr@5"])) == 1
